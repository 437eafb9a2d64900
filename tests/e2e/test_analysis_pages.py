"""Real browser: point the app at a workspace holding a short learned run and a static merge, then
visit Spectra, Representation and Diagnose and find their plotly charts."""

from __future__ import annotations

import time

import pytest

from mergecore.demo.kit import demo_adapter_dirs

from .conftest import shot


@pytest.fixture(scope="module")
def runs_workspace(tmp_path_factory):
    if not all((d / "adapter_config.json").exists() for d in demo_adapter_dirs()):
        pytest.skip("demo adapters are not available")
    from mergecore.demo.kit import demo_workbench
    from mergecore.learn.params import LearnParams
    from mergecore.runs.runner import run_learning, run_static
    from mergecore.runs.store import RunStore

    ws = tmp_path_factory.mktemp("analysis_ws")
    store, bench = RunStore(ws), demo_workbench(device="cpu")
    run_learning(bench, LearnParams(objective="entropy", steps=5, samples=16, batch_size=4, eval_every=0), store)
    run_static(bench, "task_arithmetic", None, store)
    return ws


def plot_titles(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(
        el => (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || '')""")


def wait_for_titles(page, needles: list[str], timeout: float = 240) -> list[str]:
    deadline, found = time.time() + timeout, []
    while time.time() < deadline:
        found = plot_titles(page)
        if all(any(n in t for t in found) for n in needles):
            return found
        time.sleep(0.5)
    raise AssertionError(f"charts {needles} not found; page has {found}")


def test_analysis_pages_show_their_charts(server, page, runs_workspace):
    page.goto(server + "/spectra")
    page.get_by_text("Spectra and subspaces").wait_for()
    box = page.get_by_role("textbox", name="Workspace folder")
    box.fill(str(runs_workspace))
    box.press("Enter")
    wait_for_titles(page, ["Singular values", "Effective rank"])
    shot(page, "spectra")
    page.get_by_text("Subspaces", exact=True).click()
    wait_for_titles(page, ["B column spaces", "A row spaces", "Task-vector cosine", "OSRM"])
    shot(page, "subspaces")
    page.get_by_role("link", name="Representation").click()
    wait_for_titles(page, ["Representation bias per task", "Representation bias per layer"])
    shot(page, "representation")
    page.get_by_role("link", name="Diagnose").click()
    wait_for_titles(page, ["Reliability (ECE", "Confidence of correct vs wrong", "ECE per task"])
    page.get_by_text("Examples: merged confident").wait_for()
    shot(page, "diagnose")
