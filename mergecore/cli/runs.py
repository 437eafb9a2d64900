"""``runs``: list the runs stored in a workspace."""

from __future__ import annotations

from pathlib import Path

from mergecore.cli.common import open_store
from mergecore.numbers import fmt


def run(args) -> int:
    store = open_store(args)
    for r in store.list():
        avg = f"avg {fmt(r.result['average']):>6s}" if "average" in r.result else ""
        print(f"{r.id}  {r.kind:9s} {r.status:11s} {r.name:24s} " + avg)
    return 0


def register(sub) -> None:
    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--workspace", type=Path)
    p.set_defaults(fn=run)
