"""AppTest: the Spectra, Representation and Diagnose pages on the demo kit with two short learned
runs (entropy, JS) and one static merge, plus the analyze CLI on the same workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mergecore.demo.kit import demo_adapter_dirs

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = Path("/tmp/demo_adapters")  # older complete demo set, used while the committed one is missing


def demo_dirs() -> list[str] | None:
    """The committed demo adapters, or the fallback set; None when neither is complete."""
    for dirs in (demo_adapter_dirs(), [FALLBACK / d.name for d in demo_adapter_dirs()]):
        if all((d / "adapter_config.json").exists() for d in dirs):
            return [str(d) for d in dirs]
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    dirs = demo_dirs()
    if dirs is None:
        pytest.skip("demo adapters are not available")
    from mergecore.adapters import load_adapters
    from mergecore.demo.kit import tasks_for
    from mergecore.forward.workbench import open_workbench
    from mergecore.learn.params import LearnParams
    from mergecore.runs.runner import run_learning, run_static
    from mergecore.runs.store import RunStore

    ws = tmp_path_factory.mktemp("ws")
    store = RunStore(ws)
    adapters = load_adapters(dirs)
    bench = open_workbench(adapters, tasks_for(adapters.names), device="cpu")
    ids = {}
    for objective in ("entropy", "js"):
        ids[objective], _ = run_learning(bench, LearnParams(objective=objective, steps=5, samples=16, batch_size=4,
                                                            eval_every=0), store, name=objective)
    ids["ta"], _ = run_static(bench, "task_arithmetic", None, store)
    return ws, dirs, ids


def open_page(workspace, monkeypatch, page: str) -> AppTest:
    ws, dirs, _ = workspace
    monkeypatch.setenv("MERGECORE_WORKSPACE", str(ws))
    import streamlit as st

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    if dirs != [str(d) for d in demo_adapter_dirs()]:
        at.session_state["adapter_dirs"] = dirs
    at.session_state["workspace"] = str(ws)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_spectra_page_sections(workspace, monkeypatch):
    at = open_page(workspace, monkeypatch, "pages/spectra.py")
    assert any("Singular values" in t for t in titles(at)) and any("Effective rank" in t for t in titles(at))
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["yaxis"]["type"] == "log"
    assert len(spec["data"]) == 5 + 2  # five experts + the two preselected runs on one module
    at.radio(key="spectra_section").set_value("Subspaces").run()
    assert not at.exception, at.exception
    assert {"B column spaces: overlap (mean cos²)", "A row spaces: overlap (mean cos²)"} <= set(titles(at))
    at.selectbox(key="subspace_choice").set_value("encoder 3").run()
    assert not at.exception and any("OSRM" in t for t in titles(at))
    at.radio(key="spectra_section").set_value("Divergence").run()
    assert not at.exception, at.exception
    assert any("score" in t.lower() for t in titles(at)) and any("JS" in t for t in titles(at))


def test_representation_page(workspace, monkeypatch):
    at = open_page(workspace, monkeypatch, "pages/representation.py")
    t = titles(at)
    assert any("per task" in x for x in t) and any("per layer" in x for x in t)
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(bars["data"]) == 2  # two runs preselected
    at.selectbox(key="rep_task").set_value("topic").run()
    assert not at.exception, at.exception


def test_diagnose_page_single_and_pair(workspace, monkeypatch):
    at = open_page(workspace, monkeypatch, "pages/diagnose.py")
    assert sum("Reliability (ECE" in t for t in titles(at)) == 1
    assert len(at.dataframe[-1].value.columns) == 7
    at.selectbox(key="diag_other").set_value(at.selectbox(key="diag_other").options[1]).run()
    assert not at.exception, at.exception
    assert sum("Reliability (ECE" in t for t in titles(at)) == 2
    at.selectbox(key="diag_task").set_value("topic").run()
    at.checkbox(key="diag_only").uncheck().run()
    assert not at.exception, at.exception
    assert set(at.dataframe[-1].value["task"]) == {"topic"}


def test_pages_without_runs_explain_what_to_do(tmp_path, monkeypatch, workspace):
    _, dirs, _ = workspace
    empty = (tmp_path / "empty", dirs, {})
    for page in ("pages/representation.py", "pages/diagnose.py"):
        at = open_page(empty, monkeypatch, page)
        assert any("No finished run" in i.value for i in at.info)


def test_analyze_cli_writes_tables(workspace, tmp_path, capsys):
    from mergecore.cli import main

    ws, dirs, ids = workspace
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--adapters", *dirs, "--workspace", str(ws), "--what", "calibration"])
    assert exc.value.code == 2 and "--run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--adapters", *dirs, "--workspace", str(ws), "--what", "calibration", "--run", ids["js"],
              "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert exc.value.code == 0
    assert {"calibration.json", "calibration_summary.csv", "calibration_examples.csv"} <= {
        p.name for p in (tmp_path / "out").iterdir()}
    assert "ECE" in capsys.readouterr().out
