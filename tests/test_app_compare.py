"""Compare page in AppTest: stored runs in a tmp workspace, opened through ?runs=a,b and the multiselect."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_learn import tiny_bench

from mergecore.learn.params import LearnParams
from mergecore.runs.runner import run_learning, run_static
from mergecore.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tiny_setup, tmp_path_factory):
    """Entropy (task-wise) and JS (layer-wise) runs of 5 steps and one static merge.

    The runs come from the tiny BERT bench: the page only reads the store (no model is loaded),
    and 5 demo-model steps take about a minute on the 2-core test machine."""
    bench = tiny_bench(tiny_setup)
    ws = tmp_path_factory.mktemp("ws_app")
    store = RunStore(ws)
    common = dict(steps=5, lr=0.05, batch_size=4, samples=12, eval_every=2, eval_limit=6)
    ent, _ = run_learning(bench, LearnParams(objective="entropy", **common), store, name="entropy")
    js, _ = run_learning(bench, LearnParams(objective="js", granularity="layer", **common), store, name="js")
    ta, _ = run_static(bench, "task_arithmetic", None, store, name="ta")
    return ws, store, ent, js, ta


def _app(ws, monkeypatch) -> AppTest:
    monkeypatch.setenv("MERGECORE_WORKSPACE", str(ws))
    common = sys.modules.get("pages.ui.state")  # imported by an earlier AppTest in this process
    if common is not None and hasattr(common, "DEFAULT_WORKSPACE"):  # older pages.ui.state read the env at import
        monkeypatch.setattr(common, "DEFAULT_WORKSPACE", str(ws))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    return at


def _charts(at) -> dict[str, dict]:
    specs = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        title = spec["layout"].get("title", {})
        specs[title.get("text", "") if isinstance(title, dict) else str(title)] = spec
    return specs


def test_compare_page_from_query_params(workspace, monkeypatch):
    ws, store, ent, js, ta = workspace
    at = _app(ws, monkeypatch)
    at.query_params["runs"] = f"{ent},{js},{ta}"
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="compare_runs").value == [ent, js, ta]
    labels = [store.get(i).label for i in (ent, js, ta)]
    scores = [df for df in at.dataframe if "ANP" in df.value.index]
    assert scores and list(scores[0].value.columns) == ["pre-trained", "experts", "uniform", *labels]
    assert any("ta" in c.value and "static" in c.value for c in at.caption)
    charts = _charts(at)
    titles = " | ".join(charts)
    for part in ("Task-wise coefficients", "stability", "Layer x task", "trajectories", "Collapse"):
        assert part in titles, titles
    heat = next(s for t, s in charts.items() if t.startswith("Layer x task"))
    traces = [d for d in heat["data"] if d["type"] == "heatmap"]
    assert len(traces) == 2  # the static run has no coefficients
    assert {d["zmid"] for d in traces} == {0} and len({(d["zmin"], d["zmax"]) for d in traces}) == 1
    assert traces[0]["zmin"] == -traces[0]["zmax"]
    bars = next(s for t, s in charts.items() if t.startswith("Task-wise"))
    assert len(bars["data"]) == 2
    stab = [df.value for df in at.dataframe if "negatives" in df.value.columns][0]
    assert list(stab.index) == labels[:2]


def test_compare_page_opens_on_the_two_most_recent_finished_runs(workspace, monkeypatch):
    """Without ?runs=, Compare preselects the two newest runs that finished (oldest first); a failed or
    running run newer than them is left out."""
    ws, store, ent, js, ta = workspace
    failed = store.create("broken", "learned", {"method": "learned"})
    store.finish(failed, "failed", {}, "boom")
    running = store.create("going", "learned", {"method": "learned"})
    try:
        at = _app(ws, monkeypatch)
        at.switch_page("pages/compare.py").run()
        assert not at.exception, at.exception
        assert at.multiselect(key="compare_runs").value == [js, ta]
        assert at.query_params["runs"] in ([f"{js},{ta}"], f"{js},{ta}")
        assert len(at.get("plotly_chart")) >= 4  # js has coefficients: the figures are drawn at once
    finally:
        store.delete(failed)
        store.delete(running)


def test_compare_page_choose_runs(workspace, monkeypatch):
    ws, store, ent, js, ta = workspace
    at = _app(ws, monkeypatch)
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="compare_runs").set_value([]).run()
    assert any("Choose runs" in i.value for i in at.info)
    at.multiselect(key="compare_runs").select(ta).run()
    assert not at.exception, at.exception
    assert at.query_params["runs"] == [ta] or at.query_params["runs"] == ta
    assert not at.get("plotly_chart")  # a static run alone: scores only
    at.multiselect(key="compare_runs").select(js).run()
    assert len(at.get("plotly_chart")) >= 4


def _drawn(at, key: str) -> dict:
    """The spec of the chart a page drew under ``key``, as JSON."""
    (chart,) = [c for c in at.get("plotly_chart") if key in c.proto.id]
    return json.loads(chart.proto.spec)


def test_learn_and_compare_draw_the_same_figures_for_the_same_runs(workspace, monkeypatch):
    """Compare's coefficient trajectories and collapse curves are the Learn page's figures (pages.ui.charts over
    each run's RunSeries): the same traces, names, colours, dashes and titles, run for run."""
    import plotly.io as pio
    from conftest import stop_workers

    from mergecore.runs.compare import run_tasks
    from mergecore.runs.follow import RunSeries
    from pages.ui import charts

    ws, store, ent, js, ta = workspace
    at = _app(ws, monkeypatch)
    at.query_params["runs"] = f"{ent},{js}"
    try:
        at.switch_page("pages/learn.py").run()
        assert not at.exception, at.exception
        learn = _drawn(at, "collapse_chart")
    finally:
        stop_workers(ws)  # the Learn page starts a spare worker
    at.query_params["runs"] = f"{ent},{js}"
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert _drawn(at, "compare_collapse") == learn
    series = [RunSeries(ent), RunSeries(js)]
    for s in series:
        s.update(store)
    assert all(s.evals for s in series)
    tasks = {i: run_tasks(store.get(i)) for i in (ent, js)}
    for key, fig in (("compare_collapse", charts.collapse_figure(series)),
                     ("compare_trajectories", charts.coef_figure(series, tasks))):
        want = json.loads(pio.to_json(charts.text_only(fig), validate=False))
        got = _drawn(at, key)
        assert got["data"] == want["data"], key
        assert got["layout"]["title"] == want["layout"]["title"]
    names = [d["name"] for d in _drawn(at, "compare_collapse")["data"]]
    assert names == [m for _, m in charts.METRICS] * 2 + [s.label for s in series]  # metrics, then the runs' dashes


def test_one_score_frame_for_one_run_and_for_several():
    """Learn's final table: one run as 'this run', several as a column per run label; baselines of the first."""
    from mergecore.runs.follow import RunSeries
    from pages.ui import charts

    base = {"experts": {"a": 80.0, "b": 60.0}, "uniform": {"a": 40.0, "b": 30.0}}
    one = RunSeries("r1", label="one:r1", result={"scores": {"a": 40.0, "b": 60.0}, "baselines": base})
    two = RunSeries("r2", label="two:r2", result={"scores": {"a": 80.0, "b": 30.0}})
    alone = charts.score_frame([one])
    assert list(alone.columns) == ["experts", "uniform", "this run"] and alone.equals(charts.score_frame(one.result))
    both = charts.score_frame([one, two])
    assert list(both.columns) == ["experts", "uniform", "one:r1", "two:r2"]
    assert both.loc["ANP", "one:r1"] == pytest.approx(0.75) and both.loc["average", "two:r2"] == pytest.approx(55.0)
