"""Command line: ``python -m mergecore {learn,eval,runs,merge,compare,export,analyze}``.

One module per command, each with ``register(subparsers)`` (its flags, derived from the params dataclasses)
and ``run(args) -> exit code``; ``COMMANDS`` is the explicit table. Bad input, whether argparse's (unknown
flag, bad choice, bad type, missing command) or a ``MergecoreError``, exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import typing

from mergecore.cli import analyze, compare, evaluate, export, learn, merge, runs
from mergecore.errors import MergecoreError

COMMANDS = (learn, evaluate, runs, merge, compare, export, analyze)
PROG = "python -m mergecore"


def fail(message: str) -> typing.NoReturn:
    """The contract: one line ``error: ...`` on stderr, exit code 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: argparse's message and where the help is, instead of the usage block.
    Subparsers are made of the same class (argparse's default ``parser_class`` is the parent's type)."""

    def error(self, message: str) -> typing.NoReturn:
        fail(f"{message}; see {self.prog} --help")

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        if extra:  # named with the command's help, not the top-level one
            command = getattr(ns, "command", None)
            prog = f"{PROG} {command}" if command and self.prog == PROG else self.prog
            fail(f"unrecognized arguments: {' '.join(extra)}; see {prog} --help")
        return ns


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog=PROG, description="Merge LoRA adapters and look inside the result.")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except MergecoreError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
