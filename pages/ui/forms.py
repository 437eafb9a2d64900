"""Forms built from mergecore's frozen params dataclasses: one widget per field, labelled from its metadata."""

from __future__ import annotations

import dataclasses

import streamlit as st

from mergecore.errors import MergecoreError
from mergecore.fields import parse_value, value_type
from pages.ui.text import say


def _typed_text(f, current, key: str, label: str, helptext: str | None, unread: list):
    """A text input read by ``parse_value`` (the CLI's spellings): an ``X | None`` field shows None as its none
    label; text it refuses shows one error line and keeps the value (its label goes to ``unread``)."""
    none_label = f.metadata.get("none_label", "none")
    kind, _ = value_type(f)
    if kind is str:  # optional text: empty or the none label -> None
        text = st.text_input(label, value=current or "", help=f"{helptext or ''} (empty: {none_label})", key=key)
    else:
        shown = none_label if current is None else f"{current:.12g}"
        text = st.text_input(label, value=shown, key=key,
                             help=f"{helptext or ''} -- type {none_label} or a number".strip())
    try:
        return parse_value(f, text)
    except MergecoreError:
        say("error", f"{label}: give a finite number or {none_label} (got {text!r}); nothing starts until it is one")
        unread.append(label)
        return current


def _field_widget(f, current, key: str, unread: list):
    """One widget for one dataclass field, labelled from its metadata (choices -> selectbox, X | None -> text
    with the field's none label, bool -> checkbox, numbers -> number input)."""
    label, helptext = f.metadata.get("label") or f.name, f.metadata.get("help")
    none_label = f.metadata.get("none_label")
    if f.metadata.get("choices"):
        choices, names = list(f.metadata["choices"]), dict(f.metadata.get("choice_labels") or {})
        if none_label:  # an optional choice: None is offered first, under its label
            choices, names[None] = [None, *choices], none_label
        return st.selectbox(label, choices, index=choices.index(current), help=helptext, key=key,
                            format_func=lambda c: names.get(c, c))
    if none_label:
        return _typed_text(f, current, key, label, helptext, unread)
    if isinstance(current, bool):
        return st.checkbox(label, value=current, help=helptext, key=key)
    if isinstance(current, int):
        return int(st.number_input(label, value=current, step=1, help=helptext, key=key))
    if isinstance(current, float):
        return float(st.number_input(label, value=current, format="%g", help=helptext, key=key))
    return parse_value(f, st.text_input(label, value=str(current), help=helptext, key=key))  # text: never refused


def _field_grid(fields, values, prefix: str, out: dict, unread: list) -> None:
    if not fields:
        return
    cols = st.columns(3)
    for i, f in enumerate(fields):
        with cols[i % 3]:
            out[f.name] = _field_widget(f, getattr(values, f.name), f"{prefix}_{f.name}", unread)


def dataclass_form(cls, prefix: str, values=None, skip=(), unread: list | None = None):
    """Widgets for a frozen params dataclass, labelled and explained from its field metadata: the main fields
    first, the ``advanced`` ones folded under "More settings"; returns an instance of ``cls``. A field whose text
    is no number shows its error and keeps its value; its label is appended to ``unread`` (start nothing then)."""
    values, unread = values or cls(), [] if unread is None else unread
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    out: dict = {}
    _field_grid([f for f in fields if not f.metadata.get("advanced")], values, prefix, out, unread)
    folded = [f for f in fields if f.metadata.get("advanced")]
    if folded:
        with st.expander("More settings", expanded=False):
            _field_grid(folded, values, prefix, out, unread)
    return dataclasses.replace(values, **out)
