"""The app's share of issue 25, items 2 and 5: a run store that cannot be opened is one ``st.error`` on every page
that needs it (no traceback) while the Workspace still works, and the Learn form's optional numbers never let
inf or NaN through (``1e999`` was an OverflowError traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mergecore.errors import MergecoreError
from mergecore.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[2]
DEMO = ["sentiment", "topic", "acceptability", "paraphrase", "entailment"]
STORE_PAGES = ["learn", "merge", "compare", "export", "spectra", "representation", "diagnose"]


@pytest.fixture
def ws(tmp_path):
    """The workspace of one test; any worker a page started in it is stopped after the test."""
    from conftest import stop_workers

    yield tmp_path / "ws"
    try:
        stop_workers(tmp_path / "ws")
    except MergecoreError:  # the garbage store: no run, no worker
        pass


def open_app(ws: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("MERGECORE_WORKSPACE", str(ws))
    import streamlit as st

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def workspace_works(at: AppTest) -> None:
    at.switch_page("pages/workspace.py").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert [t.value for t in at.title] == ["Workspace"]
    assert list(at.dataframe[0].value["adapter"]) == DEMO


def test_a_garbage_store_is_one_error_per_page_and_the_workspace_still_works(ws, monkeypatch):
    ws.mkdir()
    (ws / "runs.sqlite").write_bytes(b"not a database, just garbage " * 200)
    at = open_app(ws, monkeypatch)
    workspace_works(at)
    for page in STORE_PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, at.exception)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "\n" not in errors[0] and "runs" in errors[0] and "sqlite" in errors[0], (page, errors)
    workspace_works(at)  # and again after visiting every page


@pytest.mark.parametrize("typed", ["1e999", "-1e999", "nan", "inf", "1/0", "1e999999999"])
def test_the_learn_forms_init_never_passes_inf_or_nan(ws, monkeypatch, typed):
    """Typed into the form and Start pressed: the field's one error, and no run starts (1e999 was a traceback)."""
    at = open_app(ws, monkeypatch)
    at.switch_page("pages/learn.py").run()
    at.text_input(key="learn_(none)_init").set_value(typed)
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "finite number" in errors[0] and "nothing starts" in errors[0], errors
    assert "learn_runs" not in at.session_state and not RunStore(ws).list()  # no run started
