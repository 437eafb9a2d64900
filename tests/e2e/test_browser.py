"""Real browser: races on the Learn page (both curves grow, Stop ends both), a run that survives a server
restart and reattaches from its URL, and the Merge page with LoRA-DV one click away."""

from __future__ import annotations

import os
import time

from mergecore.runs.store import RunStore

from .conftest import shot, start_server, stop_server

# points the coefficient chart draws per run: {dash: points of the run's first trace}
COEF_POINTS = """() => {
    const p = [...document.querySelectorAll('.js-plotly-plot')].find(el => el.layout && el.layout.title
        && JSON.stringify(el.layout.title).includes('Merge coefficients'));
    if (!p || !p.calcdata) return {};
    const out = {};
    p.data.forEach((d, i) => { const dash = (d.line && d.line.dash) || 'solid';
        const n = (p.calcdata[i] || []).filter(c => c && c.y !== undefined && c.y !== null && !Number.isNaN(c.y)).length;
        if (!(dash in out) && n > 0) out[dash] = n; });
    return out;
}"""


def fill(page, label: str, value: str) -> None:
    """A number field of the Learn form, by its label (no Enter: the form starts runs only on its buttons)."""
    box = page.get_by_role("spinbutton", name=label, exact=True)
    box.fill(value)
    box.blur()


def open_learn(page, url: str, steps: int) -> None:
    page.goto(url + "/learn")
    page.get_by_text("Learn merge coefficients").wait_for()
    fill(page, "Optimisation steps", str(steps))
    fill(page, "Calibration examples per task", "16")


def grow(page, want_runs: int, timeout: float = 240) -> list[dict]:
    """Sample the coefficient chart until every one of ``want_runs`` runs drew at least two different point counts."""
    deadline, samples = time.time() + timeout, []
    while time.time() < deadline:
        samples.append(page.evaluate(COEF_POINTS) or {})
        seen = {}
        for s in samples:
            for dash, n in s.items():
                seen.setdefault(dash, set()).add(n)
        if len(seen) >= want_runs and all(len(v) >= 2 for v in seen.values()):
            return samples
        time.sleep(0.5)
    raise AssertionError(f"the curves did not grow for {want_runs} runs: {samples[-5:]}")


def followed(page) -> list[str]:
    return page.evaluate("() => new URL(location.href).searchParams.get('runs')").split(",")


def traffic(page) -> dict:
    """Counts of what the page receives: Streamlit's websocket frames (reruns) and live-view polls."""
    seen = {"frames": 0, "polls": 0}
    page.on("websocket", lambda ws: ws.on("framereceived", lambda _: seen.__setitem__("frames", seen["frames"] + 1)))
    page.on("requestfinished", lambda r: "/api/mergecore/live/" in r.url and seen.__setitem__("polls", seen["polls"] + 1))
    return seen


def test_race_curves_grow_for_both_runs_and_stop_ends_them(server, workspace, page):
    seen = traffic(page)
    open_learn(page, server, 400)
    page.get_by_role("button", name="Entropy vs JS").click()
    samples = grow(page, 2)
    shot(page, "race_mid_run")
    before = dict(seen)
    time.sleep(5)
    grown = page.evaluate(COEF_POINTS)
    assert seen["polls"] - before["polls"] >= 3  # the browser polls the live route about once a second ...
    assert seen["frames"] - before["frames"] <= 2, seen  # ... and Streamlit does not rerun the page to draw
    assert all(grown[d] > samples[-1][d] for d in ("solid", "dash"))  # while the curves keep growing
    ids = followed(page)
    store = RunStore(workspace)
    assert sorted(store.get(i).name for i in ids) == ["entropy-layer", "js-layer"]
    assert len({store.pid(i) for i in ids}) == 2  # one worker process per run
    assert {"solid", "dash"} <= set(samples[-1])  # dash = run on shared axes
    page.get_by_role("button", name="Stop", exact=True).click()
    deadline = time.time() + 120
    while time.time() < deadline and any(store.get(i).status == "running" for i in ids):
        time.sleep(0.5)
    assert [store.get(i).status for i in ids] == ["cancelled", "cancelled"]
    page.get_by_text("(cancelled)").first.wait_for()
    shot(page, "race_stopped")


def test_a_run_survives_a_server_restart_and_reattaches(tmp_path, page):
    from conftest import stop_workers

    proc, url = start_server(tmp_path)
    try:
        open_learn(page, url, 60)
        page.get_by_role("button", name="Start", exact=True).click()
        grow(page, 1)
        (run_id,) = followed(page)
        stop_server(proc)  # the server goes away with the tab's connection ...
        store = RunStore(tmp_path)
        assert store.get(run_id).status == "running"  # ... the run does not
        os.kill(store.pid(run_id), 0)
        proc, url = start_server(tmp_path)
        page.goto(url + f"/learn?runs={run_id}")  # a new server reattaches from the URL and the store
        page.get_by_text("Learn merge coefficients").wait_for()
        grow(page, 1)
        deadline = time.time() + 300
        while time.time() < deadline and store.get(run_id).status == "running":
            time.sleep(0.5)
        assert store.get(run_id).status == "done", store.get(run_id).message
        assert [e["step"] for e in store.events(run_id, "step")] == list(range(1, 61))
        page.get_by_text("Per-task scores").wait_for()
        shot(page, "reattached_done")
    finally:
        stop_server(proc)
        stop_workers(tmp_path)


def test_merge_page_runs_a_static_merge_and_starts_loradv_from_it(server, workspace, page):
    page.goto(server + "/merge")
    page.get_by_text("Static merge").first.wait_for()
    page.get_by_role("button", name="Merge", exact=True).click()
    page.get_by_text("per-task scores").wait_for(timeout=240_000)
    run_id = page.evaluate("() => new URL(location.href).searchParams.get('run')")
    store = RunStore(workspace)
    rec = store.get(run_id)
    assert rec.kind == "static" and rec.status == "done" and "merged" in store.artifacts(run_id)
    page.wait_for_timeout(1500)  # the score table's canvas
    shot(page, "merge_done")
    page.get_by_role("button", name="LoRA-DV from this merge").click()
    page.get_by_text("Learn merge coefficients").wait_for()
    page.wait_for_url("**/learn?runs=*")
    (loradv,) = followed(page)
    learned = store.get(loradv)
    assert learned.config["params"]["granularity"] == "spectral" and learned.config["params"]["start"] == run_id
    page.get_by_text(f"loradv-from-{rec.name}").first.wait_for()
    page.get_by_role("button", name="Stop", exact=True).click()
