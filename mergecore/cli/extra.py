"""Commands beyond learn/eval: compare (more are registered as features land)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergecore.cli.main import EXTRA_COMMANDS, emit_json, open_store, score_table


def cmd_compare(args) -> int:
    from mergecore.runs.compare import BASELINES, compare_runs

    store = open_store(args)
    show = tuple(BASELINES) if args.baselines else ()
    c = compare_runs(store, args.runs, show)
    print(c.scores.to_text())
    if c.baseline_source and show:
        print(f"(baselines from run {c.baseline_source}; ANP = mean over tasks of score / expert score)")
    if c.stability.index:
        print("\ncoefficient stability (SourceJS Fig. 2; over the learned coefficients)")
        print(c.stability.to_text(digits=3))
    if c.skipped:
        print("no learned coefficients (static merges): " + ", ".join(c.skipped))
    if args.json:
        def cell(table, row, col):  # NaN (no score for a task) -> null
            v = table.cell(row, col)
            return v if v == v else None

        rows = [t for t in c.scores.index if t not in ("average", "ANP")]
        emit_json({
            "scores": {col: {t: cell(c.scores, t, col) for t in rows} for col in c.scores.columns},
            "average": {col: cell(c.scores, "average", col) for col in c.scores.columns},
            "anp": {col: cell(c.scores, "ANP", col) for col in c.scores.columns} if "ANP" in c.scores.index else {},
            "stability": {r: {k: cell(c.stability, r, k) for k in c.stability.columns} for r in c.stability.index},
            "baselines_from": c.baseline_source,
        })
    return 0


def register_compare(sub) -> None:
    p = sub.add_parser("compare", help="score (average, ANP) and coefficient stability tables of stored runs")
    p.add_argument("runs", nargs="+", help="run ids (see `runs`)")
    p.add_argument("--workspace", type=Path)
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="add pre-trained / experts / uniform columns (from the runs' stored baselines)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_compare)


EXTRA_COMMANDS.append(register_compare)


def cmd_merge(args) -> int:
    from mergecore.cli.main import open_bench, write_run_folder
    from mergecore.merges import get_method, parse_params
    from mergecore.runs.runner import run_static

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
    from mergecore.cli.main import add_source_args
    from mergecore.merges import METHODS

    p = sub.add_parser("merge", help="apply a static merge method (task arithmetic, TIES, TSV-M, ...)")
    add_source_args(p)
    p.add_argument("--method", required=True, help="one of: " + ", ".join(METHODS))
    p.add_argument("--param", action="append", metavar="K=V", help="method parameter, repeatable")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per adapter (overrides lam)")
    p.add_argument("--name", help="run name")
    p.add_argument("--out", type=Path, help="also write the run to this folder")
    p.set_defaults(fn=cmd_merge)


EXTRA_COMMANDS.append(register_merge)
