"""Typed parameter dataclasses as flags: one flag per field (the dataclass is the one definition), and
argparse types whose refusals are one line."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from mergecore.errors import MergecoreError


class _NoneGiven:
    """An explicit ``--init 1/K`` (the field's ``none_label``): the field is set to None, not left unset."""


NONE_GIVEN = _NoneGiven()


def _optional_type(kind, none_label: str):
    """argparse type for an ``X | None`` field: a number, or the field's none label (e.g. '1/K') or 'none'."""
    def convert(raw: str):
        if raw.strip().lower() in {none_label.lower(), "none"}:
            return NONE_GIVEN
        try:
            return kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"give a number or {none_label} (got {raw!r})") from None
    convert.__name__ = kind.__name__
    return convert


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field, default None so presets and explicit flags can be layered."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        none_label = f.metadata.get("none_label", "none")
        shown = none_label if f.default is None else f.default
        helptext = f.metadata.get("help", "") + f" (default: {shown})"
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", default=None, help=helptext)
        elif args and type(None) in typing.get_args(hints[f.name]):
            parser.add_argument(flag, type=_optional_type(args[0], none_label), default=None, help=helptext)
        else:
            parser.add_argument(flag, type=hints[f.name], default=None, choices=f.metadata.get("choices"),
                                help=helptext)


def dataclass_from_args(cls, args: argparse.Namespace, base=None):
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    given = {k: None if v is NONE_GIVEN else v for k, v in given.items()}
    return dataclasses.replace(base or cls(), **given)


def flag_type(check, name: str):
    """argparse type from a checking function: its MergecoreError becomes argparse's one-line error."""
    def convert(raw: str):
        try:
            return check(raw)
        except MergecoreError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name
    return convert
