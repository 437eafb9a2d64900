"""The embedded default: demo tasks + committed LoRA experts on all-MiniLM-L6-v2, fully offline."""

from __future__ import annotations

from pathlib import Path

ADAPTER_DIR = Path(__file__).parent / "adapters"
TASK_ORDER = ("sentiment", "topic", "acceptability", "paraphrase", "entailment")


def demo_adapter_dirs() -> list[Path]:
    return [ADAPTER_DIR / name for name in TASK_ORDER]


def demo_taskset():
    from mergecore.data.demo_tasks import demo_tasks

    tasks, _ = demo_tasks()
    return tasks


def tasks_for(adapter_names: list[str]):
    """Demo tasks matching adapter names (adapters named after demo tasks), in adapter order."""
    from mergecore.errors import MergecoreError
    from mergecore.data.tasks import TaskSet

    tasks = demo_taskset()
    unknown = [n for n in adapter_names if n not in tasks.names]
    if unknown:
        raise MergecoreError(
            f"no tasks known for adapters {unknown}; name adapter folders after demo tasks "
            f"({', '.join(tasks.names)}), or pass GLUE tasks with --glue TASK ... --glue-dir DIR"
        )
    return TaskSet(tuple(tasks.by_name(n) for n in adapter_names))


def demo_workbench(device: str | None = None, names: list[str] | None = None):
    """Workbench over the demo kit (optionally a subset of its tasks)."""
    from mergecore.adapters import load_adapters
    from mergecore.forward.workbench import open_workbench

    names = names or list(TASK_ORDER)
    adapters = load_adapters([ADAPTER_DIR / n for n in names])
    return open_workbench(adapters, tasks_for(names), device=device)
