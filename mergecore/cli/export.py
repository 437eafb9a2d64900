"""``export``: write a run as a PEFT LoRA adapter folder (or full weights) + merge card.

    python -m mergecore export --run ID_OR_RUN_FOLDER --out DIR [--rank r] [--full-weights]
                               [--head TASK] [--force] [--workspace W] [--adapters DIR ...]

``--run`` (here and in ``analyze``) takes a run id or a run folder; without --adapters/--demo the run's
own adapter folders are loaded, and without --task-files/--glue its own task source (``common.run_spec``).
"""

from __future__ import annotations

from pathlib import Path

from mergecore.cli.common import add_source_args, emit_json, open_inputs, open_store, run_spec
from mergecore.cli.targets import check_out, protected
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportParams
from mergecore.export.writer import export_run
from mergecore.files import check_target
from mergecore.forward.spec import RunSpec
from mergecore.runs.folder import open_run, run_source


def export_mode(args) -> tuple[str, int]:
    if args.rank is not None and args.full_weights:
        raise MergecoreError("--rank (compressed adapter) and --full-weights exclude each other; pick one")
    if args.full_weights:
        return "full", 8
    return ("compressed", args.rank) if args.rank is not None else ("exact", 8)


def run(args) -> int:
    mode, rank = export_mode(args)
    params = ExportParams(mode=mode, rank=rank, head=args.head or "", samples=args.samples,
                          overwrite=args.force).validate()
    check_out(args, run_spec(args), "export target")  # before anything is opened
    store, rec = open_run(args.run, open_store(args))  # read once: an id or a run folder
    spec = run_spec(args, RunSpec.from_record(rec.config))  # the run's adapters and tasks unless given
    keep = protected(args, spec)
    check_target(args.out, params.overwrite, keep, "export target")  # and the run's own inputs
    bench = open_inputs(spec) if mode == "exact" else spec.open()  # exact: no base model needed
    run = run_source(store, rec, bench.adapters)
    res = export_run(bench, run, args.out, params, keep)
    ex = res.card["export"]
    ranks = sorted(set(ex["ranks"].values()))
    print(f"exported run {run.id} ({mode}, {ex['family']}" + (f", ranks {ranks}" if ranks else "")
          + (f", head {ex['head']}" if ex["head"] else "") + f") to {res.path}")
    if "energy" in ex:
        change = ex["probability_change"]
        print(f"retained energy {ex['energy']['overall']:.4f} overall (worst module {ex['energy']['min']:.4f})"
              + (f"; largest label-probability change on calibration inputs {change['max']:.4g}"
                 if change["max"] is not None else "")
              + (f" (generative tasks left out: {', '.join(change['left_out'])})" if change["left_out"] else ""))
    if args.json:
        emit_json({"path": str(res.path), "files": res.files, "export": ex})
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write a run as a PEFT LoRA adapter folder (or full weights) + merge card")
    add_source_args(p)
    p.add_argument("--run", required=True, help="run id in the workspace, or a run folder (run.json + tensors); "
                                                "its adapters and tasks are reused unless given")
    p.add_argument("--out", required=True, type=Path, help="target folder (new or empty unless --force)")
    p.add_argument("--rank", type=int, help="compress to this rank by truncated SVD (default: exact, rank = sum r_k)")
    p.add_argument("--full-weights", action="store_true", help="write the full merged model instead of an adapter")
    p.add_argument("--head", help="task whose head the adapter carries (default: the first task)")
    p.add_argument("--samples", type=int, default=128, help="calibration examples per task for the compressed report")
    p.add_argument("--force", action="store_true", help="replace an existing target folder that mergecore wrote")
    p.set_defaults(fn=run)
