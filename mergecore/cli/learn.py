"""``learn``: learn merge coefficients (task-, layer-, block-wise or spectral) and score the result."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mergecore.cli.common import add_source_args, compact, emit_json, open_store, progress, run_spec, score_table
from mergecore.cli.flags import add_dataclass_args, dataclass_from_args
from mergecore.cli.targets import check_out, protected
from mergecore.learn.params import PRESETS, LearnParams, apply_preset
from mergecore.runs.folder import write_run_folder
from mergecore.runs.runner import run_learning


def run(args) -> int:
    params = dataclass_from_args(LearnParams, args, apply_preset(LearnParams(), args.preset)).validate()
    spec = run_spec(args)
    check_out(args, spec, "run folder target")  # before the model is loaded or a step learned
    t0 = time.perf_counter()
    bench = spec.open()
    store = open_store(args)
    bar = progress(params.steps, args.json)

    def on_event(kind, step, payload):
        if kind == "step" and bar is not None:
            bar.set_postfix(loss=f"{payload['loss']:.4f}")
            bar.update(1)

    run_id, result = run_learning(bench, params, store, name=args.name, on_event=on_event)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if args.out:
        write_run_folder(args.out, store, run_id, args.force, protected(args, spec))
    base = result["baselines"]
    print(score_table({"pre-trained": base["pre-trained"], "experts": base["experts"], "uniform": base["uniform"],
                       f"{params.objective}-{params.granularity}": result["scores"]}, base["experts"]))
    print(f"run {run_id} ({result['status']}) in {seconds:.1f} s; stored in {store.path}"
          + (f"; written to {args.out}" if args.out else ""))
    if result["message"]:
        print(result["message"], file=sys.stderr)
    if args.json:
        emit_json({"run": result["scores"], "uniform": result["uniform"], "coefficients": compact(result.get("coefs") or []) or None,  # spectral runs: gains, no (L, K) coefficients
                   "run_id": run_id, "status": result["status"], "seconds": seconds})
    return 0 if result["status"] == "done" else 1


def register(sub) -> None:
    p = sub.add_parser("learn", help="learn merge coefficients")
    add_source_args(p)
    add_dataclass_args(p, LearnParams)
    p.add_argument("--preset", choices=list(PRESETS), help="load a paper's hyperparameters (explicit flags win)")
    p.add_argument("--name", help="run name")
    p.add_argument("--out", type=Path, help="also write the run to this folder (new or empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder that mergecore wrote")
    p.set_defaults(fn=run)
