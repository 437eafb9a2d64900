"""AppTest: the Workspace and Learn pages on the demo kit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGECORE_WORKSPACE", str(tmp_path / "ws"))
    import streamlit as st

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    return at


def test_workspace_page_shows_adapters_modules_and_tasks(app):
    assert not app.exception, app.exception
    assert [t.value for t in app.title] == ["Workspace"]
    adapters = app.dataframe[0].value
    assert list(adapters["adapter"]) == ["sentiment", "topic", "acceptability", "paraphrase", "entailment"]
    assert len(app.dataframe[1].value) == 12  # query + value in 6 layers
    assert len(app.dataframe[2].value) == 5


def test_workspace_bad_adapter_folder_shows_error_and_stays_usable(app, tmp_path):
    app.text_area(key="adapter_text").set_value(str(tmp_path / "missing"))
    app.button(key="load_adapters").click().run()
    assert any("does not exist" in e.value for e in app.error)
    assert len(app.dataframe[0].value) == 5  # still on the demo kit
    assert not app.exception


def test_learn_page_runs_a_job_and_shows_scores(app):
    app.switch_page("pages/learn.py").run()
    assert not app.exception, app.exception
    app.number_input(key="learn_(none)_steps").set_value(4)
    app.number_input(key="learn_(none)_eval_every").set_value(2)
    app.button[0].click()  # the form's Start button
    app.run()
    run_id = app.session_state["learn_run"]
    import pages.common as common  # the app's own module: same st.cache_resource

    job = common.registry(os.environ["MERGECORE_WORKSPACE"]).get(run_id)
    job.thread.join(timeout=900)
    assert job.status == "done", job.message
    app.run()
    specs = [c.proto.spec for c in app.get("plotly_chart")]
    assert any("Merge coefficients" in s for s in specs) and any("Loss" in s for s in specs)
    table = app.dataframe[-1].value
    assert {"uniform", "this run"} <= set(table.columns) and "average" in table.index


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "glue").is_dir(), reason="../shared/data/glue not present")
def test_glue_preset_loads_the_committed_glue_experts(app):
    """The preset button fills in the 8 committed MiniLM GLUE experts and the GLUE task source; Load pairs them."""
    label = next(b.label for b in app.button if b.label.startswith("GLUE experts (MiniLM"))
    app.button(key=f"preset_{label}").click().run()
    assert app.radio(key="task_kind").value == "GLUE"
    assert len(app.text_area(key="adapter_text").value.splitlines()) == 8
    app.number_input(key="glue_eval").set_value(20)
    app.button(key="load_adapters").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert list(app.dataframe[0].value["adapter"]) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
    tasks = app.dataframe[2].value
    assert list(tasks["metric"])[:1] == ["matthews"] and set(tasks["evaluation"]) == {20}
