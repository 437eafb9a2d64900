"""Command line: ``python -m mergecore {learn,eval,runs,merge,compare,export,analyze}``.

One module per command, each with ``register(subparsers)`` (its flags, derived from the params dataclasses)
and ``run(args) -> exit code``; ``COMMANDS`` is the explicit table. A ``MergecoreError`` exits with code 2
and its one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from mergecore.cli import analyze, compare, evaluate, export, learn, merge, runs
from mergecore.errors import MergecoreError

COMMANDS = (learn, evaluate, runs, merge, compare, export, analyze)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mergecore", description="Merge LoRA adapters and look inside the result.")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except MergecoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
