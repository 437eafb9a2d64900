"""Where a workbench's tasks come from: one description for the CLI, the app and the run configs.

    TaskSource()                                          the demo kit's tasks, matched by adapter name
    TaskSource("glue", glue_dir=DIR, calibration=128)     GLUE tasks matched by adapter name, from a folder
                                                          (``glue_dir`` None: the datasets hub when online)
    TaskSource("files", mapping=JSON)                     CSV/TSV/JSONL files named by a JSON task mapping

``load_tasks(adapter_names, source)`` reads the tasks; ``record(source, task_names)`` is what a run stores
(absolute paths), so commands taking ``--run`` reopen the same tasks (``from_record``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mergecore.data.demo_tasks import tasks_for
from mergecore.data.glue import GlueParams, load_glue, match_tasks
from mergecore.data.taskfiles import tasks_from_specs
from mergecore.data.tasks import TaskSet
from mergecore.errors import MergecoreError

KINDS = ("demo", "glue", "files")


@dataclass(frozen=True)
class TaskSource:
    kind: str = "demo"  # demo | glue | files
    glue_dir: str | None = None  # glue: a local GLUE folder (<TASK>/train.tsv, dev.tsv); None: datasets
    names: tuple[str, ...] = ()  # glue: task names in adapter order (empty: matched from adapter names)
    calibration: int = 128  # glue: calibration examples per task
    eval_size: int = 0  # glue: evaluation examples per task (0: all)
    mapping: str | None = None  # files: the JSON task mapping (relative data paths: from its folder)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MergecoreError(f"unknown task source {self.kind!r}; valid: {', '.join(KINDS)}")


def read_mapping(path: str | Path) -> list:
    path = Path(path).expanduser()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MergecoreError(f"cannot read the task mapping {path} ({type(exc).__name__}); check the path") from None
    except json.JSONDecodeError as exc:
        raise MergecoreError(f"{path} is not valid JSON ({exc.msg}); give a list with one object per adapter") from None


def load_tasks(adapter_names: list[str], source: TaskSource = TaskSource()) -> TaskSet:
    """One task per adapter, in adapter order."""
    if source.kind == "glue":
        params = GlueParams(calibration=source.calibration, evaluation=source.eval_size)
        return load_glue(list(source.names) or match_tasks(adapter_names), source=source.glue_dir or "auto",
                         params=params)
    if source.kind == "files":
        mapping = Path(source.mapping or "").expanduser()
        return tasks_from_specs(adapter_names, read_mapping(mapping), base_dir=mapping.parent, source=mapping)
    return tasks_for(adapter_names)


def record(source: TaskSource, task_names: list[str]) -> dict:
    """What a run records: the kind; GLUE's local folder (absolute) or the source named ('auto': the datasets
    hub when online), task names and split sizes; a task mapping's absolute path."""
    if source.kind == "glue":
        folder = source.glue_dir
        local = bool(folder) and Path(folder).expanduser().is_dir()
        return {"kind": "glue", "names": list(task_names),
                "dir": str(Path(folder).expanduser().resolve()) if local else None,
                "source": None if local else (folder or "auto"),
                "calibration": source.calibration, "eval_size": source.eval_size}
    if source.kind == "files":
        return {"kind": "files", "path": str(Path(source.mapping or "").expanduser().resolve())}
    return {"kind": "demo"}


def from_record(rec: dict) -> TaskSource:
    """The source a run recorded (``record``'s output); {} or None: the demo tasks."""
    rec = rec or {}
    if rec.get("kind") == "glue":
        return TaskSource("glue", glue_dir=rec.get("dir") or rec.get("source"), names=tuple(rec.get("names") or ()),
                          calibration=rec.get("calibration", 128), eval_size=rec.get("eval_size", 0))
    if rec.get("kind") == "files":
        return TaskSource("files", mapping=rec.get("path"))
    return TaskSource()
