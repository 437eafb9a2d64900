"""What every command shares: the source flags, opening a workbench and a store, tables and JSON output.

Typed parameter dataclasses become flags (one definition: the dataclass); bad input exits with code 2 and
one line on stderr; ``--json`` prints one JSON object last on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from mergecore.adapters import load_adapters
from mergecore.cli.flags import add_dataclass_args, dataclass_from_args, flag_type
from mergecore.bases import base_family, family_of_adapters, looks_local
from mergecore.data.sources import TaskSource, load_tasks, mapping_files, record
from mergecore.demo.kit import demo_adapter_dirs
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportInputs
from mergecore.forward.workbench import DEVICES, Workbench, open_workbench, resolve_device
from mergecore.numbers import dumps
from mergecore.placement import LoadParams
from mergecore.runs import compare
from mergecore.runs.folder import run_config
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


def task_source(args: argparse.Namespace) -> TaskSource:
    """The task source the flags name: --glue (with --glue-dir and sizes), --task-files, else the demo tasks."""
    if args.glue is not None:
        return TaskSource("glue", glue_dir=args.glue_dir, names=tuple(args.glue), calibration=args.calibration,
                          eval_size=args.eval_size)
    if args.task_files is not None:
        return TaskSource("files", mapping=str(args.task_files))
    return TaskSource()


def open_bench(args: argparse.Namespace) -> Workbench:
    check_sources(args)
    source = task_source(args)
    adapters = load_adapters(args.adapters or demo_adapter_dirs(), allow_bin=args.allow_bin, base_model=args.base_model)
    bench = open_workbench(adapters, load_tasks(adapters.names, source), device=args.device,
                           trust_remote_code=args.trust_remote_code, family=args.family, base_path=args.base_path,
                           load=dataclass_from_args(LoadParams, args))
    bench.task_source = record(source, bench.tasks.names)  # recorded in run configs: `--run` reuses it
    return bench


def open_inputs(args: argparse.Namespace) -> ExportInputs:
    """Adapters, tasks, family and base name from the flags, without loading the base model (the family from
    --family, the adapters' PEFT task_type, else the base's config.json)."""
    check_sources(args)
    adapters = load_adapters(args.adapters or demo_adapter_dirs(), allow_bin=args.allow_bin, base_model=args.base_model)
    name = args.base_model or adapters.base_model
    if not name and not args.base_path:
        raise MergecoreError("the adapters name no base model; pass --base-model PATH_OR_HUB_ID")
    family = args.family or family_of_adapters(adapters) or base_family(name or args.base_path, args.base_path,
                                                                      args.trust_remote_code)
    return ExportInputs(adapters, load_tasks(adapters.names, task_source(args)), family, name or args.base_path)


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


def _gone(what: str, path, flag: str) -> MergecoreError:
    return MergecoreError(f"the run's {what} {path} no longer exists; pass {flag}")


def run_sources(ref: str, store, args) -> dict:
    """Fill ``args`` with the run's own inputs where the user gave none: its adapter folders (--adapters)
    and its task source (--task-files / --glue with --glue-dir and sizes; demo tasks need nothing).
    A recorded source that no longer exists is one line naming it and the flag to pass. Returns the config."""
    config = run_config(ref, store)
    if not args.adapters and not args.demo:
        sources = [a.get("source") for a in config.get("adapters") or []]
        if sources:
            for s in sources:
                local = s and (Path(s).expanduser().is_absolute() or Path(s).expanduser().is_dir())
                if not s or (local and not Path(s).expanduser().is_dir()):
                    raise _gone("adapter folder", s, "--adapters DIR ... (the run's adapters, in order)")
            args.adapters = sources
    for key, value in (config.get("load") or {}).items():  # the run's dtype / quantization / device map
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.glue is None and args.task_files is None:
        src = config.get("task_source") or {}
        if src.get("kind") == "files":
            mapping = Path(src.get("path") or "")
            if not mapping.is_file():
                raise _gone("task mapping", mapping, "--task-files JSON")
            for f in mapping_files(mapping):
                if not f.is_file():
                    raise _gone(f"task file (from {mapping})", f, "--task-files JSON with the new paths")
            args.task_files = mapping
        elif src.get("kind") == "glue":
            if src.get("dir") and not Path(src["dir"]).is_dir():
                raise _gone("GLUE folder", src["dir"], "--glue-dir DIR")
            args.glue, args.glue_dir = list(src.get("names") or []), src.get("dir") or src.get("source")
            args.calibration = src.get("calibration", args.calibration)
            args.eval_size = src.get("eval_size", args.eval_size)
    return config
