"""AppTest: the Export page on the demo kit (two tasks) with a learned run stored in a tmp workspace."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mergecore.demo.kit import demo_adapter_dirs

NAMES = ("sentiment", "topic")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace holding one learned run over two demo adapters (few steps)."""
    from mergecore.demo.kit import demo_workbench
    from mergecore.learn.params import LearnParams
    from mergecore.runs.runner import run_learning
    from mergecore.runs.store import RunStore

    ws = tmp_path_factory.mktemp("ws")
    bench = demo_workbench(device="cpu", names=list(NAMES))
    run_id, _ = run_learning(bench, LearnParams(steps=2, samples=8, batch_size=4, eval_every=0), RunStore(ws),
                             name="tiny-run")
    return ws, run_id


@pytest.fixture
def app(workspace, monkeypatch):
    ws, _ = workspace
    monkeypatch.setenv("MERGECORE_WORKSPACE", str(ws))
    import streamlit as st

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["adapter_dirs"] = [str(p) for p in demo_adapter_dirs() if p.name in NAMES]
    at.session_state["workspace"] = str(ws)
    at.run()
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception
    return at


def test_export_page_writes_adapter_download_and_card(app, workspace, monkeypatch):
    import mergecore.files as ex  # the page imports zip_folder from here on every run

    ws, run_id = workspace
    zipped = []
    real_zip = ex.zip_folder
    monkeypatch.setattr(ex, "zip_folder", lambda folder: zipped.append(real_zip(folder)) or zipped[-1])
    assert [t.value for t in app.title] == ["Export a merged adapter"]
    assert run_id in app.selectbox(key="export_run").value
    assert not app.get("download_button")
    app.button(key="export_button").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    folder = next((ws / "exports").iterdir())
    card = json.loads((folder / "merge_card.json").read_text())
    assert card["run"]["id"] == run_id and card["export"]["mode"] == "exact"
    button = app.download_button(key="export_download")
    assert button.proto.label == "Download zip" and zipped, "no download button after export"
    assert any("PeftModel.from_pretrained" in c.value for c in app.code)
    assert app.json and json.loads(app.json[0].value)["run"]["id"] == run_id
    names = zipfile.ZipFile(io.BytesIO(zipped[-1])).namelist()
    assert f"{folder.name}/adapter_model.safetensors" in names and f"{folder.name}/heads/topic.safetensors" in names

    # a second export to the same folder needs the overwrite box; the page stays usable
    app.button(key="export_button").click().run()
    assert any("already exists" in e.value for e in app.error)
    app.checkbox(key="export_force").check().run()
    app.button(key="export_button").click().run()
    assert not app.error


def test_export_page_compressed_shows_energy(app):
    app.radio(key="export_mode").set_value("compressed").run()
    app.number_input(key="export_rank").set_value(4).run()
    app.button(key="export_button").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    labels = [m.label for m in app.metric]
    assert "Retained energy (overall)" in labels and "Largest label-probability change" in labels
    energy = float(next(m.value for m in app.metric if m.label == "Retained energy (overall)"))
    assert 0.0 < energy <= 1.0
