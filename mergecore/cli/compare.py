"""``compare``: score (average, ANP) and coefficient stability tables of stored runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergecore.cli.common import emit_json, open_store
from mergecore.runs.compare import BASELINES, compare_runs


def run(args) -> int:
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


def register(sub) -> None:
    p = sub.add_parser("compare", help="score (average, ANP) and coefficient stability tables of stored runs")
    p.add_argument("runs", nargs="+", help="run ids (see `runs`)")
    p.add_argument("--workspace", type=Path)
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="add pre-trained / experts / uniform columns (from the runs' stored baselines)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=run)
