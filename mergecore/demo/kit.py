"""The embedded default: demo tasks + committed LoRA experts on all-MiniLM-L6-v2, fully offline."""

from __future__ import annotations

from pathlib import Path

from mergecore.adapters import load_adapters
from mergecore.data.demo_tasks import tasks_for
from mergecore.forward.workbench import open_workbench

ADAPTER_DIR = Path(__file__).parent / "adapters"
TASK_ORDER = ("sentiment", "topic", "acceptability", "paraphrase", "entailment")


def demo_adapter_dirs() -> list[Path]:
    return [ADAPTER_DIR / name for name in TASK_ORDER]


def demo_workbench(device: str | None = None, names: list[str] | None = None):
    """Workbench over the demo kit (optionally a subset of its tasks)."""
    names = names or list(TASK_ORDER)
    adapters = load_adapters([ADAPTER_DIR / n for n in names])
    return open_workbench(adapters, tasks_for(names), device=device)
