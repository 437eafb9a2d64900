"""Real browser: open the Compare page on ?runs=a,b over a workspace holding two learned runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from mergecore.learn.params import LearnParams
from mergecore.runs.runner import run_learning
from mergecore.runs.store import RunStore

from .conftest import ROOT, _free_port, shot


@pytest.fixture(scope="module")
def compare_server(tiny_setup, tmp_path_factory):
    """A Streamlit server on a workspace with an entropy (task-wise) and a JS (layer-wise) run."""
    from test_learn import tiny_bench

    bench = tiny_bench(tiny_setup)
    ws = tmp_path_factory.mktemp("ws_compare")
    store = RunStore(ws)
    common = dict(steps=5, lr=0.05, batch_size=4, samples=12, eval_every=2, eval_limit=6)
    a, _ = run_learning(bench, LearnParams(objective="entropy", **common), store, name="entropy")
    b, _ = run_learning(bench, LearnParams(objective="js", granularity="layer", **common), store, name="js")
    port = _free_port()
    env = {**os.environ, "MERGECORE_WORKSPACE": str(ws), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("streamlit did not become healthy")
        yield url, a, b
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _plot_titles(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(el => {
        const t = el.layout && el.layout.title; return t ? (t.text || String(t)) : ''; })""")


def test_compare_page_opens_on_query_runs(compare_server, page):
    url, a, b = compare_server
    # Open the app once first: a fresh server whose first page is a deep link runs the page
    # standalone (Streamlit's legacy pages/ discovery) until app.py's st.navigation has run once.
    page.goto(url)
    page.get_by_label("Workspace folder", exact=True).wait_for()
    page.goto(f"{url}/compare?runs={a},{b}")
    page.get_by_text("Compare runs").wait_for()
    page.get_by_label("Workspace folder", exact=True).wait_for()  # inside the app (navigation + shared sidebar)
    wanted = ("Task-wise coefficients", "stability", "Layer x task", "trajectories", "Collapse")
    deadline, titles = time.time() + 90, []
    while time.time() < deadline:
        titles = _plot_titles(page)
        if all(any(w in t for t in titles) for w in wanted):
            break
        time.sleep(0.5)
    page.wait_for_timeout(1000)
    shot(page, "compare_runs")
    plots = page.locator(".js-plotly-plot")
    for i, name in ((2, "compare_heatmaps"), (plots.count() - 1, "compare_curves")):
        plots.nth(i).scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        shot(page, name)
    assert all(any(w in t for t in titles) for w in wanted), titles
    assert page.locator(".js-plotly-plot").count() >= 5
    # both runs are preselected and the query string keeps them
    assert f"runs={a}" in page.url.replace("%2C", ",") and b in page.url
    assert page.get_by_text("entropy ·").count() >= 1 and page.get_by_text("js ·").count() >= 1
