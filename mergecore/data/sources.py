"""Where a workbench's tasks come from: one description for the CLI, the app and the run configs.

    TaskSource()                                          the demo kit's tasks, matched by adapter name
    TaskSource("glue", glue_dir=DIR, calibration=128)     GLUE tasks matched by adapter name, from a folder
                                                          (``glue_dir`` None: the datasets hub when online)
    TaskSource("files", mapping=JSON)                     CSV/TSV/JSONL files named by a JSON task mapping

``load_tasks(adapter_names, source)`` reads the tasks; ``record(source, task_names)`` is what a run stores
(absolute paths), so commands taking ``--run`` reopen the same tasks (``from_record``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mergecore.data.demo_tasks import tasks_for
from mergecore.data.glue import GlueParams, load_glue, match_tasks
from mergecore.data.metrics import METRICS
from mergecore.data.taskfiles import Columns, file_task, generative_task
from mergecore.data.tasks import TaskSet
from mergecore.errors import MergecoreError
from mergecore.files import read_json, read_regular_file, write_text_atomic

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
        for name, value in (("calibration", self.calibration), ("eval_size", self.eval_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:  # a slice bound: -1 drops rows
                raise MergecoreError(f"{name} must be a whole number >= 0, 0 = all (got {value!r}); "
                                     f"set --{name.replace('_', '-')} to a count")


# ----------------------------------------------------------------------------- task mappings (JSON)


SPEC_KEYS = {"train", "eval", "text"}
LABEL_KEYS = SPEC_KEYS | {"label", "labels", "prompt", "verbalizers", "metric"}
GENERATIVE_KEYS = SPEC_KEYS | {"reference", "prompt"}
SPEC_HELP = "keys train, eval, text plus label and labels (label task) or reference (generative task)"


def _is_names(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _spec_keys(s, where: str) -> str:
    """'label' or 'generative' for a spec object with the right keys, else one line naming the key."""
    if not isinstance(s, dict):
        raise MergecoreError(f"{where} is a {type(s).__name__}, not an object; give one object per adapter with {SPEC_HELP}")
    kind = "generative" if "reference" in s else "label"
    need = SPEC_KEYS | ({"reference"} if kind == "generative" else {"label", "labels"})
    missing = sorted(need - set(s))
    if missing:
        raise MergecoreError(f"{where} lacks key(s) {', '.join(missing)}; give one object per adapter with {SPEC_HELP}")
    allowed = GENERATIVE_KEYS if kind == "generative" else LABEL_KEYS
    unknown = sorted(set(s) - allowed, key=str)
    if unknown:
        raise MergecoreError(f"{where}: unknown key {unknown[0]!r} for a {kind} task; valid keys: {', '.join(sorted(allowed))}")
    return kind


def _spec_values(s: dict, where: str) -> None:
    """One line naming the key whose value has the wrong type (or an unknown metric)."""
    def bad(key: str, want: str):
        shown = json.dumps(s[key])
        shown = shown if len(shown) <= 60 else shown[:60] + "..."
        raise MergecoreError(f"{where}: {key!r} is {shown}; give {want}")

    for key in ("train", "eval"):
        if not isinstance(s[key], str) or not s[key].strip():
            bad(key, "a file path (string), relative to the task mapping's folder or absolute")
    if not (isinstance(s["text"], str) and s["text"]) and not (_is_names(s["text"]) and s["text"]):
        bad("text", 'a column name ("review") or a list of one or two column names (["premise", "hypothesis"])')
    if "label" in s and not isinstance(s["label"], str):
        bad("label", 'the label column name (a string, e.g. "label")')
    if "labels" in s and not (isinstance(s["labels"], list) and all(
            isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in s["labels"])):
        bad("labels", 'a list of class names in class-id order, e.g. ["negative", "positive"]')
    if "reference" in s and s["reference"] is not None and not isinstance(s["reference"], str):
        bad("reference", "the reference column name (a string) or null")
    if "prompt" in s and not isinstance(s["prompt"], str):
        bad("prompt", 'a template string such as "Review: {0}"')
    if "verbalizers" in s and not (_is_names(s["verbalizers"]) and len(s["verbalizers"]) == len(s["labels"])):
        bad("verbalizers", f"a list of {len(s['labels'])} strings, one per label")
    if "metric" in s and s["metric"] not in METRICS:
        bad("metric", f"one of {', '.join(METRICS)}")


def _spec_path(value: str, base_dir: str | Path | None) -> Path:
    p = Path(value).expanduser()
    return Path(base_dir).expanduser() / p if base_dir is not None and not p.is_absolute() else p


def tasks_from_specs(names: list[str], specs, base_dir: str | Path | None = None,
                     source: str | Path | None = None) -> TaskSet:
    """Tasks from one file spec per adapter (parsed JSON): {"train", "eval", "text", "label", "labels"} for a
    label task, {"train", "eval", "text", "reference"} (reference may be null) for a generative task;
    optional "prompt", "verbalizers", "metric" (label tasks). "text" is a column name or a list of them;
    text labels map through "labels" (numbers stay class ids). Relative paths are read from ``base_dir``
    (the mapping file's folder) when given, else from the current folder; ``source`` names the mapping in errors."""
    src = str(source) if source is not None else "the task mapping"
    if not isinstance(specs, list) or len(specs) != len(names):
        got = f"{len(specs)} entries" if isinstance(specs, list) else f"a {type(specs).__name__}"
        raise MergecoreError(f"{src} holds {got} for {len(names)} adapter(s) ({', '.join(names)}); give a JSON "
                             f"list with one object per adapter, in adapter order, with {SPEC_HELP}")
    tasks = []
    for i, (name, s) in enumerate(zip(names, specs), 1):
        where = f"{src} entry {i} (adapter {name!r})"
        kind = _spec_keys(s, where)
        _spec_values(s, where)
        text = (s["text"],) if isinstance(s["text"], str) else tuple(s["text"])
        train, ev = _spec_path(s["train"], base_dir), _spec_path(s["eval"], base_dir)
        if kind == "generative":
            tasks.append(generative_task(name, train, ev, text, s["reference"], prompt=s.get("prompt", "{0}")))
            continue
        labels = tuple(str(x) for x in s["labels"])
        tasks.append(file_task(name, train, ev, Columns(text=text, label=s["label"]), labels,
                               prompt=s.get("prompt", "{0}"), verbalizers=s.get("verbalizers"),
                               metric=s.get("metric", "accuracy")))
    return TaskSet(tuple(tasks))


MAX_MAPPING_BYTES = 16 * 2**20


def read_mapping(path: str | Path) -> list:
    """The parsed task mapping: a regular file of at most 16 MiB holding JSON nested at most 64 levels."""
    path = Path(path).expanduser()
    data = read_regular_file(path, MAX_MAPPING_BYTES, "the task mapping")
    try:
        return read_json(data.decode("utf-8"), str(path))
    except UnicodeDecodeError:
        raise MergecoreError(f"the task mapping {path} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise MergecoreError(f"{path} is not valid JSON ({exc.msg}); give a list with one object per adapter") from None


def mapping_files(mapping: str | Path) -> list[Path]:
    """The train / eval files a task mapping names, resolved as ``load_tasks`` reads them (relative paths from
    the mapping's folder); an unreadable or malformed mapping names none (``load_tasks`` reports it)."""
    try:
        specs = read_mapping(mapping)
    except MergecoreError:
        return []
    return [_spec_path(s[key], Path(mapping).expanduser().parent) for s in (specs if isinstance(specs, list) else [])
            if isinstance(s, dict)
            for key in ("train", "eval") if isinstance(s.get(key), str) and s[key].strip()]


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


def typed_mapping(text: str, folder: str | Path) -> TaskSource:
    """A task mapping typed as JSON text (the app's form) as a task source: relative data paths made absolute from
    the current folder, saved once by content in ``folder`` (``save_mapping``) so a run made from it records the file."""
    try:
        specs = read_json(text, "the column mapping")  # typed text: deep nesting is one line
    except json.JSONDecodeError as exc:
        raise MergecoreError(f"the column mapping is not valid JSON ({exc.msg}); give a JSON list") from None
    if isinstance(specs, list):
        specs = [{**s, **{k: str(Path(s[k]).expanduser().absolute()) for k in ("train", "eval")
                          if isinstance(s.get(k), str) and s[k].strip()}} if isinstance(s, dict) else s for s in specs]
    return TaskSource("files", mapping=str(save_mapping(specs, folder)))


def save_mapping(specs, folder: str | Path) -> Path:
    """Write a task mapping (the parsed JSON list of specs) to ``folder/<content hash>.json`` once, so a run
    made from it can record the file and ``--run`` can reuse it; returns the path."""
    text = json.dumps(specs, indent=1, sort_keys=True)
    path = Path(folder) / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        write_text_atomic(path, text)
    return path
