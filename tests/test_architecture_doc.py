"""docs/architecture.md tells the truth: every module its step tables name imports, no module appears twice in a
table, and every dotted name the tables give (``runs.folder.open_run``, ``pages.ui.forms.dataclass_form``, ...)
exists where the doc says it lives."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
DOTTED = re.compile(r"`([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)(?:\(\))?`")


def tables() -> dict[str, list[list[str]]]:
    """Section title -> the rows (cells) of the tables in it."""
    out: dict[str, list[list[str]]] = {}
    title = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
        elif line.startswith("|") and not set(line) <= set("|-: "):
            out.setdefault(title, []).append([c.strip() for c in line.strip("|").split("|")])
    return out


def resolve(name: str):
    """The object ``name`` denotes (``mergecore.x`` / ``pages.x`` as given, else under ``mergecore``), or None when
    it names no module of ours (``bench.spec``, ``adapter_config.json`` in prose); raises AttributeError when the
    module exists but lacks the rest."""
    own = name.split(".")[0] in ("mergecore", "pages")
    for full in ([name] if own else [f"mergecore.{name}"]):
        parts = full.split(".")
        for cut in range(len(parts), 1, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
    return None


STEP_SECTIONS = [t for t in tables() if t.startswith("From ")]


def test_the_doc_has_both_paths():
    assert STEP_SECTIONS == ["From an adapter folder to an exported adapter", "From a flag or a form field to the learner"]


@pytest.mark.parametrize("section", STEP_SECTIONS)
def test_step_tables_name_modules_that_import_each_once(section):
    rows = [r for r in tables()[section] if r[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
    modules = [m for r in rows for m in re.findall(r"`([\w.]+)`", r[1])]
    assert len(modules) == len(rows), rows  # one module per step
    for m in modules:
        importlib.import_module(m)
    assert len(set(modules)) == len(modules), modules


@pytest.mark.parametrize("section", [*STEP_SECTIONS, "Where each concept lives"])
def test_every_dotted_name_exists_where_the_doc_says(section):
    names = {n for row in tables()[section] for cell in row for n in DOTTED.findall(cell)}
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except AttributeError as exc:
            missing.append(f"{name}: {exc}")
    assert missing == []
