"""Text from outside shown as typed: ``plain`` escapes markdown / HTML / autolinks, ``say`` shows one alert of it."""

from __future__ import annotations

import re

import streamlit as st

# Markdown (and HTML) that text from outside must not form: backslash-escaped wherever it appears; an underscore
# inside a word cannot emphasise, so it stays (adapter_config.json reads as typed)
_ESCAPE = re.compile(r"[\\`*\[\]<>&$~|]|(?<![^\W_])_|_(?![^\W_])")
_LINE_START = re.compile(r"^(\s*)([-+=#>]|\d+(?=[.)]))", re.M)  # lists, headings, quotes, setext underlines
# what remark turns into links or icons even when escaped: http://, www., e-mail addresses, :emoji: / :material/
_AUTOLINK = re.compile(r"(?<=[:@])(?=\S)|(?i:(?<=www)(?=\.))")
JOINER = "\u2060"  # WORD JOINER: invisible, breaks the autolink and shortcode patterns


def plain(text) -> str:
    """Text from outside (URL parameters, adapter and base configs, file contents, task, label and run names,
    paths, and so every MergecoreError message) as markdown that renders exactly that text: no link, image,
    HTML, emphasis, heading, list, emoji or icon. For alerts, captions, subheaders, progress texts and labels."""
    out = _ESCAPE.sub(lambda m: "\\" + m.group(0), str(text))
    out = _LINE_START.sub(lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit() else "\\" + m.group(2)), out)
    return _AUTOLINK.sub(JOINER, out)


def say(kind: str, text, where=None) -> None:
    """One ``st.error`` / ``warning`` / ``info`` / ``success`` / ``caption`` of text that may hold outside text
    (every MergecoreError does: paths, names), shown literally through ``plain``; ``where``: a column or container."""
    where = st if where is None else where
    if kind == "caption":
        where.caption(plain(text))
    else:
        getattr(where, kind)(plain(text), icon="")  # icon="": no leading emoji of the text taken as the icon
