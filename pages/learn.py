"""Learn: start one run or a race of several (each in its own worker process) and watch them live."""

from __future__ import annotations

import os
from dataclasses import replace

import streamlit as st

from mergecore.errors import MergecoreError
from mergecore.learn.objectives import OBJECTIVES
from mergecore.learn.params import GRANULARITIES, PRESET_TITLES, PRESETS, LearnParams, apply_preset
from mergecore.runs.follow import RunSeries
from pages.ui import charts, live_view
from pages.ui.state import job_page
from pages.ui.forms import dataclass_form
from pages.ui.text import plain, say

# the live view reads new events and redraws at most once a second (MERGECORE_LIVE_REFRESH_S to change it: what
# watching costs on a 2-core machine at 1 s and 3 s is in docs/perf.md)
REFRESH_S = float(os.environ.get("MERGECORE_LIVE_REFRESH_S", "1.0"))

bench, workers = job_page("Learn merge coefficients")
store = workers.store
live_area = st.container()  # progress, charts and scores of the followed runs, above the settings


def race(params: LearnParams, objectives: list[str], granularities: list[str]) -> list[LearnParams]:
    """The form's settings once per objective x granularity."""
    return [replace(params, objective=o, granularity=g) for o in objectives for g in granularities]


def follow(run_ids: list[str]) -> None:
    st.session_state["learn_runs"] = run_ids
    st.query_params["runs"] = ",".join(run_ids)


def followed() -> list[str]:
    ids = st.session_state.get("learn_runs") or (st.query_params.get("runs") or st.query_params.get("run") or "").split(",")
    return [i for i in ids if i]


with st.expander("Settings", expanded=not followed()):
    preset = st.selectbox("Paper preset", ["(none)"] + list(PRESETS), key="learn_preset",
                          format_func=lambda p: PRESET_TITLES.get(p, p),
                          help="loads a paper's hyperparameters into the form")
    base = apply_preset(LearnParams(), None if preset == "(none)" else preset)
    with st.form("learn_form", enter_to_submit=False):  # Enter in a field must not start a run
        unread: list[str] = []  # fields whose text is no number: their error is shown, nothing starts
        params = dataclass_form(LearnParams, f"learn_{preset}", base, unread=unread)
        name = st.text_input("Run name (optional)", key="learn_name")
        st.caption("A race runs the settings above once per objective x granularity, all at once, on shared axes.")
        c1, c2 = st.columns(2)
        objectives = c1.multiselect("Race: objectives", list(OBJECTIVES), default=["entropy", "js"], key="race_objectives")
        granularities = c2.multiselect("Race: granularities", list(GRANULARITIES), default=["layer"], key="race_gran")
        b1, b2, b3 = st.columns([1, 1, 3])
        start = b1.form_submit_button("Start", type="primary")
        start_race = b2.form_submit_button("Start race")
        pair = b3.form_submit_button("Entropy vs JS", help="entropy and JS at once, layer-wise (SourceJS's headline "
                                     "setting), the other settings from the form")

if (start or start_race or pair) and not unread:
    if start:
        runs, names = [params], [name or None]
    else:
        runs = race(params, ["entropy", "js"], ["layer"]) if pair else race(params, objectives, granularities)
        names = [f"{p.objective}-{p.granularity}" for p in runs]
    try:
        if not runs:
            raise MergecoreError("pick at least one objective and one granularity for the race")
        runs = [p.validate() for p in runs]  # the form's numbers, range-checked before any worker starts
        follow(workers.start_learning(bench, bench.spec, runs, names))
    except MergecoreError as exc:
        say("error", exc)

run_ids = followed()
cache: dict = st.session_state.setdefault("learn_series", {})
series: list[RunSeries] = []
for run_id in run_ids:
    try:
        series.append(cache.setdefault(run_id, RunSeries(run_id)))
        series[-1].update(store)
    except MergecoreError as exc:
        say("error", exc)
        series.pop()
        cache.pop(run_id, None)


def progress(s: RunSeries) -> None:
    fraction, text = s.progress()
    st.progress(fraction, text=plain(text))


def stop_button(running: list[RunSeries]) -> None:
    if running and st.button("Stop", key="stop_button", help="stops every followed run after its current step"):
        for s in running:
            workers.stop(s.run_id)


def figures(series: list[RunSeries]):
    """The three live figures, rebuilt only when an event arrived since the last refresh."""
    key = tuple((s.run_id, s.seq, s.status) for s in series)
    cached = st.session_state.get("learn_figures")
    if cached is None or cached[0] != key:
        collapse = charts.collapse_figure(series) if any(s.evals for s in series) else None
        cached = (key, (charts.loss_figure(series), charts.coef_figure(series, bench.tasks.names), collapse))
        st.session_state["learn_figures"] = cached
    return cached[1]


@st.fragment(run_every=REFRESH_S if any(not s.done for s in series) else None)
def live() -> None:
    """Progress, charts and Stop from Python: the final view, and the live view where the JSON route of
    pages/ui/live_view.py is not served (AppTest): then this fragment reruns every REFRESH_S."""
    workers.reap()
    for s in series:
        s.update(store)
    running = [s for s in series if not s.done]
    for s in series:
        progress(s)
    stop_button(running)
    loss, coefs, collapse = figures(series)
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.text_only(loss), key="loss_chart", width="stretch")
    with right:
        st.plotly_chart(charts.text_only(coefs), key="coef_chart", width="stretch")
    if collapse is not None:
        st.plotly_chart(charts.text_only(collapse), key="collapse_chart", width="stretch")
    final_key = "final_" + ",".join(s.run_id for s in series)
    if not running and not st.session_state.get(final_key):
        st.session_state[final_key] = True
        st.rerun()  # a full rerun stops the timer and shows the final tables


def finals(series: list[RunSeries]) -> None:
    for s in series:
        if s.status in ("failed", "interrupted") or s.message:
            say("error" if s.status in ("failed", "interrupted") else "warning", f"{s.label}: {s.message}")
    results = [s for s in series if s.result.get("scores")]
    if not results:
        return
    st.subheader("Per-task scores")
    st.dataframe(charts.score_style(charts.score_frame(results)), key="final_scores")
    if st.button("Open these runs in Compare", key="to_compare"):
        st.switch_page("pages/compare.py", query_params={"runs": ",".join(s.run_id for s in results)})


with live_area:
    if series and live_view.SERVED and any(not s.done for s in series):
        stop_button([s for s in series if not s.done])  # the browser polls; no rerun until every run ends
        live_view.show(workers, series, bench.tasks.names, REFRESH_S)
    elif series:
        live()
        if all(s.done for s in series):
            finals(series)
