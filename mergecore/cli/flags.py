"""Typed parameter dataclasses as flags: one flag per field (the dataclass is the one definition), and
argparse types whose refusals are one line."""

from __future__ import annotations

import argparse
import dataclasses

from mergecore.errors import MergecoreError
from mergecore.fields import parse_value, value_type


class _NoneGiven:
    """An explicit ``--init 1/K`` (the field's ``none_label``): the field is set to None, not left unset."""


NONE_GIVEN = _NoneGiven()


def _refusal(f, raw: str) -> Exception:
    """argparse's one-line refusal of a flag's text that ``parse_value`` refused, in argparse's words."""
    kind, optional = value_type(f)
    none_label = f.metadata.get("none_label", "none")
    if f.metadata.get("choices"):
        valid = ", ".join([*map(str, f.metadata["choices"]), *([none_label] if optional else [])])
        return argparse.ArgumentTypeError(f"invalid choice: {raw!r} (choose from {valid})")
    if optional:
        return argparse.ArgumentTypeError(f"give {'a whole number' if kind is int else 'a number'} or {none_label} "
                                          f"(got {raw!r})")
    want = "a whole number" if kind is int else "a finite number" if kind is float else "true or false"
    return argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {raw!r}; give {want}")


def field_type(f):
    """argparse type of a dataclass field: ``parse_value`` (the spellings the app and ``--param`` accept too);
    an explicit none spelling becomes NONE_GIVEN."""
    def convert(raw: str):
        try:
            value = parse_value(f, raw)
        except MergecoreError:
            raise _refusal(f, raw) from None
        return NONE_GIVEN if value is None else value
    convert.__name__ = value_type(f)[0].__name__
    return convert


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field, default None so presets and explicit flags can be layered."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        shown = f.metadata.get("none_label", "none") if f.default is None else f.default
        helptext = f.metadata.get("help", "") + f" (default: {shown})"
        if value_type(f)[0] is bool:
            parser.add_argument(flag, action="store_true", default=None, help=helptext)
        else:  # choices: only for the usage line (field_type refuses any other name first, as the app and --param)
            choices = None if value_type(f)[1] else f.metadata.get("choices")
            parser.add_argument(flag, type=field_type(f), default=None, choices=choices, help=helptext)


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
