"""Commands beyond learn/eval: compare (more are registered as features land)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import EXTRA_COMMANDS, emit_json, open_store, score_table


def cmd_compare(args) -> int:
    from .analysis.stability import stability

    store = open_store(args)
    runs = [store.get(r) for r in args.runs]
    columns, stab = {}, {}
    for r in runs:
        if r.kind == "baseline":
            columns.update(r.result["baselines"])
            continue
        columns[f"{r.name}:{r.id[-6:]}"] = r.result.get("scores", {})
        if "coefs" in r.result:
            import torch

            stab[f"{r.name}:{r.id[-6:]}"] = stability(torch.tensor(r.result["coefs"]))
    experts = next((r.result.get("baselines", {}).get("experts") for r in runs if r.result.get("baselines")), None)
    print(score_table(columns, experts))
    if stab:
        print("\ncoefficient stability (SourceJS Fig. 2)")
        print(f"{'run':30s}{'range':>10s}{'std':>10s}{'negatives':>11s}{'min':>10s}{'max':>10s}")
        for name, s in stab.items():
            print(f"{name:30s}{s['range']:10.3f}{s['std']:10.3f}{s['negatives']:11d}{s['min']:10.3f}{s['max']:10.3f}")
    if args.json:
        emit_json({"scores": columns, "stability": stab})
    return 0


def register_compare(sub) -> None:
    p = sub.add_parser("compare", help="score and stability tables of stored runs")
    p.add_argument("runs", nargs="+", help="run ids (see `runs`)")
    p.add_argument("--workspace", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_compare)


EXTRA_COMMANDS.append(register_compare)


def cmd_merge(args) -> int:
    from .cli import open_bench, write_run_folder
    from .merges import get_method, parse_params
    from .runner import run_static

    method = get_method(args.method)
    params = parse_params(method.name, args.param or [])
    bench = open_bench(args)
    store = open_store(args)
    run_id, result = run_static(bench, method.name, params, store, weights=args.weights, name=args.name)
    if args.out:
        write_run_folder(args.out, store, run_id)
    base = result["baselines"]
    print(score_table({"experts": base["experts"], "uniform": base["uniform"], method.name: result["scores"]},
                      base["experts"]))
    print(f"run {run_id} ({method.space} space) in {result['seconds']:.1f} s; stored in {store.path}")
    if args.json:
        emit_json({"run": result["scores"], "uniform": result["uniform"], "run_id": run_id,
                   "seconds": result["seconds"], "method": method.name})
    return 0


def register_merge(sub) -> None:
    from .cli import add_source_args
    from .merges import METHODS

    p = sub.add_parser("merge", help="apply a static merge method (task arithmetic, TIES, TSV-M, ...)")
    add_source_args(p)
    p.add_argument("--method", required=True, help="one of: " + ", ".join(METHODS))
    p.add_argument("--param", action="append", metavar="K=V", help="method parameter, repeatable")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per adapter (overrides lam)")
    p.add_argument("--name", help="run name")
    p.add_argument("--out", type=Path, help="also write the run to this folder")
    p.set_defaults(fn=cmd_merge)


EXTRA_COMMANDS.append(register_merge)
