"""``eval``: pre-trained, experts and uniform scores of a workbench (cached in the store)."""

from __future__ import annotations

import time

from mergecore.cli.common import add_source_args, emit_json, open_store, run_spec, score_table
from mergecore.runs.runner import cached_baselines


def run(args) -> int:
    t0 = time.perf_counter()
    bench = run_spec(args).open()
    base = cached_baselines(bench, open_store(args))
    print(score_table(base, base["experts"]))
    if args.json:
        emit_json({"uniform": base["uniform"], "experts": base["experts"], "pre-trained": base["pre-trained"],
                   "seconds": time.perf_counter() - t0})
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="pre-trained / experts / uniform scores")
    add_source_args(p)
    p.set_defaults(fn=run)
