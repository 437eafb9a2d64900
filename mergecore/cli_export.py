"""CLI command 'export' (registered into mergecore.cli).

    python -m mergecore export --run ID_OR_RUN_FOLDER --out DIR [--rank r] [--full-weights]
                               [--head TASK] [--force] [--workspace W] [--adapters DIR ...]

Without --adapters/--demo the run's own adapter folders (from its config) are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from .cli import EXTRA_COMMANDS, add_source_args, emit_json, open_bench, open_store
from .errors import MergecoreError


def run_adapter_sources(ref: str, store) -> list[str] | None:
    """The adapter folders a run was made from (its config), when they still exist."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        try:
            config = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("config", {})
        except (OSError, ValueError, AttributeError):
            return None  # read_run_folder reports the corrupt file
    else:
        config = store.get(ref).config
    sources = [a.get("source") for a in config.get("adapters") or []]
    return sources if sources and all(s and Path(s).is_dir() for s in sources) else None


def export_mode(args) -> tuple[str, int]:
    if args.rank is not None and args.full_weights:
        raise MergecoreError("--rank (compressed adapter) and --full-weights exclude each other; pick one")
    if args.full_weights:
        return "full", 8
    return ("compressed", args.rank) if args.rank is not None else ("exact", 8)


def cmd_export(args) -> int:
    from .export import ExportParams, export_run, load_run

    mode, rank = export_mode(args)
    params = ExportParams(mode=mode, rank=rank, head=args.head or "", samples=args.samples,
                          overwrite=args.force).validate()
    store = open_store(args)
    if not args.adapters and not args.demo:
        args.adapters = run_adapter_sources(args.run, store)
    bench = open_bench(args)
    run = load_run(args.run, store, bench.adapters)
    res = export_run(bench, run, args.out, params)
    ex = res.card["export"]
    ranks = sorted(set(ex["ranks"].values()))
    print(f"exported run {run.id} ({mode}" + (f", ranks {ranks}" if ranks else "") + f", head {ex['head']}) to {res.path}")
    if "energy" in ex:
        print(f"retained energy {ex['energy']['overall']:.4f} overall (worst module {ex['energy']['min']:.4f}); "
              f"largest label-probability change on calibration inputs {ex['probability_change']['max']:.4g}")
    if args.json:
        emit_json({"path": str(res.path), "files": res.files, "export": ex})
    return 0


def register_export(sub) -> None:
    p = sub.add_parser("export", help="write a run as a PEFT LoRA adapter folder (or full weights) + merge card")
    add_source_args(p)
    p.add_argument("--run", required=True, help="run id in the workspace, or a run folder (run.json + tensors)")
    p.add_argument("--out", required=True, type=Path, help="target folder (must not exist unless --force)")
    p.add_argument("--rank", type=int, help="compress to this rank by truncated SVD (default: exact, rank = sum r_k)")
    p.add_argument("--full-weights", action="store_true", help="write the full merged model instead of an adapter")
    p.add_argument("--head", help="task whose head the adapter carries (default: the first task)")
    p.add_argument("--samples", type=int, default=128, help="calibration examples per task for the compressed report")
    p.add_argument("--force", action="store_true", help="replace an existing target folder")
    p.set_defaults(fn=cmd_export)


EXTRA_COMMANDS.append(register_export)
