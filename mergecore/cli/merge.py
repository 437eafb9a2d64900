"""``merge``: apply a static merge method of the registry (task arithmetic, TIES, TSV-M, ...) and score it."""

from __future__ import annotations

import math
from pathlib import Path

from mergecore.cli.common import add_source_args, emit_json, open_store, run_spec, score_table
from mergecore.cli.targets import check_out, protected
from mergecore.errors import MergecoreError
from mergecore.merges import METHODS, get_method, parse_params
from mergecore.runs.folder import write_run_folder
from mergecore.runs.runner import run_static


def run(args) -> int:
    method = get_method(args.method)
    params = parse_params(method.name, args.param or [])
    spec = run_spec(args)
    check_out(args, spec, "run folder target")  # before the model is loaded
    if args.weights is not None and not all(math.isfinite(w) for w in args.weights):
        raise MergecoreError(f"--weights must be finite numbers (got {args.weights}); give one finite weight per adapter")
    bench = spec.open()
    store = open_store(args)
    run_id, result = run_static(bench, method.name, params, store, weights=args.weights, name=args.name)
    if args.out:
        write_run_folder(args.out, store, run_id, args.force, protected(args, spec))
    base = result["baselines"]
    print(score_table({"experts": base["experts"], "uniform": base["uniform"], method.name: result["scores"]},
                      base["experts"]))
    print(f"run {run_id} ({method.space} space) in {result['seconds']:.1f} s; stored in {store.path}")
    if args.json:
        emit_json({"run": result["scores"], "uniform": result["uniform"], "run_id": run_id,
                   "seconds": result["seconds"], "method": method.name})
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge", help="apply a static merge method (task arithmetic, TIES, TSV-M, ...)")
    add_source_args(p)
    p.add_argument("--method", required=True, help="one of: " + ", ".join(METHODS))
    p.add_argument("--param", action="append", metavar="K=V", help="method parameter, repeatable")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per adapter (overrides lam)")
    p.add_argument("--name", help="run name")
    p.add_argument("--out", type=Path, help="also write the run to this folder (new or empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder that mergecore wrote")
    p.set_defaults(fn=run)
