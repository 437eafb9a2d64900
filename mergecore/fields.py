"""The fields of the frozen params dataclasses (learning, merges, lenses, loading, export): what a field says
about itself (``param``), how a typed value is read from text (``parse_value``) and the range check of their
``validate()`` (``check_number``). The CLI's flags, the merge methods' ``key=value`` items and the app's forms
all read a field through these, so each front end accepts the same spellings:

    numbers    int() spellings for a whole-number field; float() spellings or a fraction a/b for a float field,
               finite only (nan, inf, 1e999 and 1/0 are refused, never clamped)
    optional   an ``X | None`` field reads '', 'none', 'null' or its none_label (e.g. '1/K') as None
    choices    exactly one of the field's choices
    bools      true/false, yes/no, on/off, 1/0 (any case)
    strings    as given, without surrounding blanks
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any

from mergecore.errors import MergecoreError

_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def param(default: Any, label: str, help: str, *, advanced: bool = False, choices: tuple | None = None,
          choice_labels: dict | None = None, none_label: str | None = None) -> Any:
    """A dataclass field with the metadata the CLI, the app's forms and the merge card read: a human ``label``,
    ``help`` in the papers' words, ``advanced`` (folded in the form), and where given the valid ``choices`` (with
    their ``choice_labels``) and the ``none_label`` an ``X | None`` field shows for None (e.g. '1/K')."""
    meta = {"label": label, "help": help, "advanced": advanced, "choices": choices, "choice_labels": choice_labels,
            "none_label": none_label}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def value_type(f: dataclasses.Field) -> tuple[type, bool]:
    """(the field's value type, whether it may be None) from its annotation: ``float | None`` -> (float, True)."""
    tp = f.type
    if isinstance(tp, str):  # postponed annotations: 'float | None'
        parts = [_NAMES[p.strip()] for p in tp.split("|")]
    else:
        is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        parts = list(typing.get_args(tp)) if is_union else [tp]
    kinds = [p for p in parts if p is not type(None)]
    return kinds[0], len(kinds) < len(parts)


def none_spellings(f: dataclasses.Field) -> set[str]:
    """What an ``X | None`` field reads as None (lower case; blanks around are ignored)."""
    return {"", "none", "null", f.metadata.get("none_label", "").lower()}


def _number(f: dataclasses.Field, raw: str, kind: type) -> int | float:
    if kind is int:
        try:
            return int(raw)  # never a float first: '1e999' is no whole number, and 10**N is never computed
        except ValueError:
            raise MergecoreError(f"parameter {f.name} expects int, got {raw!r}") from None
    try:
        parts = [float(x) for x in raw.split("/", 1)]  # '1e999' is inf at once (float, never 10**999 as an int)
    except ValueError:
        raise MergecoreError(f"parameter {f.name} expects float, got {raw!r}") from None
    num, den = parts if len(parts) == 2 else (parts[0], 1.0)
    value = num / den if den and math.isfinite(num) and math.isfinite(den) else math.nan  # 1/0, inf/inf: refused
    if not math.isfinite(value):  # nan, inf, 1e999, 1e300/1e-300
        raise MergecoreError(f"{f.name} must be a finite number, got {raw!r}")
    return value


def parse_value(f: dataclasses.Field, text: str) -> Any:
    """The typed value of field ``f`` written as ``text`` (the spellings in this module's docstring); one line
    naming the field otherwise."""
    kind, optional = value_type(f)
    raw = str(text).strip()
    if optional and raw.lower() in none_spellings(f):
        return None
    choices = f.metadata.get("choices")
    if choices:
        if raw in choices:
            return raw
        valid = ", ".join(map(str, choices)) + (f" or {f.metadata['none_label']}" if optional else "")
        raise MergecoreError(f"{f.name} must be one of {valid}, got {raw!r}")
    if kind is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise MergecoreError(f"parameter {f.name} expects bool, got {raw!r}")
    if kind in (int, float):
        return _number(f, raw, kind)
    return raw


def check_number(name: str, value: Any, flag: str, low: float | None = None, high: float | None = None, *,
                 whole: bool = False, above: bool = False) -> None:
    """The one range check of every params dataclass (merges, learning, lenses, export; the CLI and the app's
    forms share them): ``value`` must be a finite number (a whole one when ``whole``), >= ``low`` (> when
    ``above``) and <= ``high``; else one line naming the field, its flag and the valid range."""
    real = isinstance(value, numbers.Integral if whole else numbers.Real) and not isinstance(value, bool)
    ok = real and (isinstance(value, numbers.Integral) or math.isfinite(value)) and (
        low is None or (value > low if above else value >= low)) and (high is None or value <= high)
    if ok:
        return
    kind = "a whole number" if whole else "a finite number"
    if low is not None and high is not None:
        top = f"2**{high.bit_length()} - 1" if whole and high > 2**20 and (high + 1).bit_count() == 1 else high
        rule = f"{'a whole number' if whole else 'a number'} in {'(' if above else '['}{low}, {top}]"
    elif low is not None:
        rule = ("a positive number" if above and low == 0 and not whole else f"at least {low}" if whole
                else f"a finite number {'>' if above else '>='} {low}")
    else:
        rule = kind
    want = f"{kind} {'>' if above else '>='} {low}" if low is not None and high is None else rule
    raise MergecoreError(f"{name} must be {rule} (got {value!r}); set {flag} to {want}")
