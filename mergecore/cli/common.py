"""What every command shares: the source flags and the RunSpec they name (``--run`` reusing a stored one), the
store, tables and JSON output.

Typed parameter dataclasses become flags (one definition: the dataclass); bad input exits with code 2 and
one line on stderr; ``--json`` prints one JSON object last on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from mergecore.bases import base_family, family_of_adapters, looks_local
from mergecore.cli.flags import add_dataclass_args, dataclass_from_args, flag_type
from mergecore.data.sources import TaskSource, mapping_files
from mergecore.demo.kit import demo_adapter_dirs
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportInputs
from mergecore.forward.spec import RunSpec
from mergecore.forward.workbench import DEVICES, resolve_device
from mergecore.numbers import dumps
from mergecore.placement import LoadParams
from mergecore.runs import compare
from mergecore.runs.store import RunStore


def _count(raw: str) -> int:
    """A whole number >= 0 (0: all)."""
    try:
        n = int(raw)
    except ValueError:
        raise MergecoreError(f"give a whole number >= 0 (got {raw!r})") from None
    if n < 0:
        raise MergecoreError(f"must be >= 0, 0 = all (got {n})")
    return n


def _device(raw: str) -> str:
    resolve_device(raw)  # one line for a device this torch does not have, before anything is loaded
    return raw


def add_source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--demo", action="store_true", help="the embedded demo kit (default when no adapters are given)")
    src.add_argument("--adapters", nargs="+", metavar="DIR", help="PEFT LoRA adapter folders or hub ids")
    p.add_argument("--base-model", help="base model path or hub id (overrides the adapters' configs)")
    p.add_argument("--allow-bin", action="store_true", help="accept adapter_model.bin pickles (loaded weights_only)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow base models with custom code")
    p.add_argument("--glue", nargs="*", metavar="TASK", help="GLUE tasks (default: matched from adapter names)")
    p.add_argument("--glue-dir", help="local GLUE folder (<TASK>/train.tsv, dev.tsv); default: datasets when online")
    p.add_argument("--task-files", type=Path, metavar="JSON", help=(
        "tasks from CSV/TSV/JSONL files: a JSON list, one object per adapter, {train, eval, text, label, labels} "
        "for a label task or {train, eval, text, reference} for a generative task (ROUGE-1)"))
    p.add_argument("--calibration", type=flag_type(_count, "count"), default=128,
                   help="GLUE: calibration examples per task (0: all)")
    p.add_argument("--eval-size", type=flag_type(_count, "count"), default=0,
                   help="GLUE: evaluation examples per task (0: all)")
    p.add_argument("--family", choices=["classifier", "seq2seq", "causal"], help="model family (default: detected)")
    p.add_argument("--base-path", help="local folder of the base model when the adapters name a hub id")
    p.add_argument("--device", default="auto", type=flag_type(_device, "device"),
                   help=f"{DEVICES} (auto: CUDA when visible)")
    add_dataclass_args(p, LoadParams)  # --dtype, --quantize, --device-map
    p.add_argument("--workspace", type=Path, help="run store folder (default: ./workspace or $MERGECORE_WORKSPACE)")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")


def _missing(what: str, path, fix: str) -> MergecoreError:
    return MergecoreError(f"{what} {path} does not exist; {fix}")


def check_sources(args: argparse.Namespace) -> None:
    """The local paths the flags name, checked before any adapter, hub look-up or model is loaded: a path
    that does not exist is said to be missing (never looked up as a hub id), a folder where a file is due
    is one line."""
    dataclass_from_args(LoadParams, args).validate()  # --dtype, --quantize, --device-map (a JSON file)
    for a in args.adapters or []:
        if looks_local(str(a)) and not Path(a).expanduser().exists():
            raise _missing("adapter folder", a, "pass a PEFT adapter folder (adapter_config.json inside) or a hub id")
    if args.base_model and looks_local(args.base_model) and not Path(args.base_model).expanduser().exists():
        raise _missing("base model folder", args.base_model, "pass --base-model PATH (the folder holding config.json) or a hub id")
    if args.base_path and not Path(args.base_path).expanduser().is_dir():
        raise _missing("base model folder", args.base_path, "--base-path needs the folder holding config.json")
    if args.glue is not None and args.glue_dir and args.glue_dir not in ("hf", "auto"):
        if not Path(args.glue_dir).expanduser().is_dir():
            raise _missing("GLUE folder", args.glue_dir, "pass --glue-dir DIR holding <TASK>/train.tsv and "
                           "dev.tsv, or leave it out to fetch GLUE from the hub")
    if args.glue is None and args.task_files is not None:
        mapping = Path(args.task_files).expanduser()
        if not mapping.exists():
            raise _missing("task mapping", mapping, "pass --task-files FILE.json")
        if not mapping.is_file():
            raise MergecoreError(f"task mapping {mapping} is not a file; pass --task-files FILE.json (a JSON list, "
                                 "one object per adapter)")


def flag_tasks(args: argparse.Namespace) -> TaskSource | None:
    """The task source the flags name: --glue (with --glue-dir and sizes), --task-files; None when neither."""
    if args.glue is not None:
        return TaskSource("glue", glue_dir=args.glue_dir, names=tuple(args.glue), calibration=args.calibration,
                          eval_size=args.eval_size)
    if args.task_files is not None:
        return TaskSource("files", mapping=str(args.task_files))
    return None


def run_spec(args: argparse.Namespace, recorded: RunSpec | None = None) -> RunSpec:
    """The RunSpec the flags name (checked before anything is loaded); with ``recorded`` (``--run``: the spec a
    stored run recorded), the run's own adapters (with their base), task source and base weights wherever the
    flags give none. A recorded input that no longer exists is one line naming it and the flag to pass."""
    check_sources(args)
    reuse = recorded is not None and not args.adapters and not args.demo and bool(recorded.adapters)
    if reuse:
        check_recorded_adapters(recorded)
    adapters = (RunSpec.of(args.adapters).adapters if args.adapters else recorded.adapters if reuse
                else RunSpec.of(demo_adapter_dirs()).adapters)
    tasks = flag_tasks(args)
    if tasks is None:
        tasks = check_recorded_tasks(recorded.tasks) if recorded is not None and recorded.tasks else TaskSource()
    mine = recorded if reuse else RunSpec()
    return RunSpec(adapters=adapters, tasks=tasks, base_model=args.base_model or mine.base_model,
                   base_path=args.base_path or mine.base_path, family=args.family or mine.family,
                   load=dataclass_from_args(LoadParams, args, recorded.load if recorded else None), device=args.device,
                   allow_bin=args.allow_bin, trust_remote_code=args.trust_remote_code)


def _gone(what: str, path, flag: str) -> MergecoreError:
    return MergecoreError(f"the run's {what} {path} no longer exists; pass {flag}")


def check_recorded_adapters(spec: RunSpec) -> None:
    for a in spec.adapters:
        s = a.source
        local = s and (Path(s).expanduser().is_absolute() or Path(s).expanduser().is_dir())
        if not s or (local and not Path(s).expanduser().is_dir()):
            raise _gone("adapter folder", s, "--adapters DIR ... (the run's adapters, in order)")


def check_recorded_tasks(source: TaskSource) -> TaskSource:
    """A recorded task source, its files and folders checked to still exist."""
    if source.kind == "files":
        mapping = Path(source.mapping or "")
        if not mapping.is_file():
            raise _gone("task mapping", mapping, "--task-files JSON")
        for f in mapping_files(mapping):
            if not f.is_file():
                raise _gone(f"task file (from {mapping})", f, "--task-files JSON with the new paths")
    if source.kind == "glue" and source.glue_dir and Path(source.glue_dir).is_absolute() \
            and not Path(source.glue_dir).is_dir():
        raise _gone("GLUE folder", source.glue_dir, "--glue-dir DIR")
    return source


def open_inputs(spec: RunSpec) -> ExportInputs:
    """Adapters, tasks, family and base name of ``spec`` without loading the base model (the family from
    --family, the adapters' PEFT task_type, else the base's config.json)."""
    adapters, tasks = spec.load_inputs()
    name = spec.base_model or adapters.base_model
    if not name and not spec.base_path:
        raise MergecoreError("the adapters name no base model; pass --base-model PATH_OR_HUB_ID")
    family = spec.family or family_of_adapters(adapters) or base_family(name or spec.base_path, spec.base_path or None,
                                                                       spec.trust_remote_code)
    return ExportInputs(adapters, tasks, family, name or spec.base_path)


def open_store(args):
    return RunStore(args.workspace)


def score_table(columns: dict[str, dict[str, float]], experts: dict[str, float] | None = None) -> str:
    """Tasks as rows, one column per merge, plus average (and ANP vs the experts); undefined numbers print '-'."""
    return compare.score_table(columns, experts).to_text(corner="task")


def compact(coefs: list) -> list:
    """Task-wise coefficients as one row (K,) instead of L identical rows."""
    return coefs[0] if coefs and all(row == coefs[0] for row in coefs) else coefs


def emit_json(obj: dict) -> None:
    """One JSON object on stdout; undefined numbers (NaN, inf) are null, never a bare NaN."""
    print(dumps(obj, default=float))


def progress(total: int, quiet: bool):
    if quiet and not sys.stderr.isatty():
        return None
    return tqdm(total=total, desc="learning", unit="step", file=sys.stderr)
