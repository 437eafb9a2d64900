"""Merge: any static method of the registry, run as a job, scored against the baselines, stored for the
other pages; LoRA-DV (learned spectral gains) from the result in one click."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from mergecore.errors import MergecoreError
from mergecore.learn.params import LearnParams, apply_preset
from mergecore.merges import METHODS, get_method
from mergecore.runs.follow import RunSeries
from pages.ui import charts
from pages.ui.state import job_page
from pages.ui.forms import dataclass_form
from pages.ui.text import plain, say

SPACES = {"lora-factors": "LoRA factors", "core": "shared core space", "dense": "dense delta"}

bench, workers = job_page("Static merge")
store = workers.store


def parse_weights(text: str) -> list[float] | None:
    """'0.3, 0.3, 0.4' -> [0.3, 0.3, 0.4]; empty -> None (the method's default)."""
    if not text.strip():
        return None
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise MergecoreError(f"weights {text!r}: give one number per adapter, comma-separated") from None


method = st.selectbox("Method", list(METHODS), key="merge_method",
                      format_func=lambda n: f"{n} ({SPACES.get(METHODS[n].space, METHODS[n].space)})")
m = get_method(method)
st.caption(f"{m.summary.rstrip('.')}. Works in the {SPACES.get(m.space, m.space)}.")
with st.form("merge_form", enter_to_submit=False):
    unread: list[str] = []  # fields whose text is no number: their error is shown, nothing starts
    try:
        params = dataclass_form(m.params_cls, f"merge_{method}", unread=unread)
    except MergecoreError as exc:
        params = None
        say("error", exc)
    weights_text = st.text_input(f"Weights (one per adapter: {plain(', '.join(bench.adapters.names))}; empty: the "
                                 "method's default)", key="merge_weights")
    name = st.text_input("Run name (optional)", key="merge_name")
    go = st.form_submit_button("Merge", type="primary")

if go and params is not None and not unread:
    try:
        run_id = workers.start_merge(bench, bench.spec, method, params, parse_weights(weights_text), name or None)
        st.session_state["merge_run"] = run_id
        st.query_params["run"] = run_id
    except MergecoreError as exc:
        say("error", exc)

run_id = st.session_state.get("merge_run") or st.query_params.get("run")
series = None
if run_id:
    try:
        series = st.session_state.setdefault("merge_series", {}).setdefault(run_id, RunSeries(run_id))
        series.update(store)
    except MergecoreError as exc:
        say("error", exc)
        series = None


def loradv_from(run: RunSeries) -> None:
    """A LoRA-DV run (entropy, spectral gains; LoRA-DV Sec. 4.4) starting from this merge, followed on Learn."""
    params = replace(apply_preset(LearnParams(), "loradv"), start=run.run_id)
    ids = workers.start_learning(bench, bench.spec, [params], [f"loradv-from-{run.name}"])
    st.session_state["learn_runs"] = ids
    st.switch_page("pages/learn.py", query_params={"runs": ",".join(ids)})


@st.fragment(run_every=1.0 if series is not None and not series.done else None)
def live() -> None:
    workers.reap()
    series.update(store)
    if not series.done:
        st.progress(0.5, text=plain(f"{series.label}: {series.stage or 'starting a worker process'} ({series.status})"))
        if st.button("Stop", key="merge_stop"):
            workers.stop(series.run_id)
    elif not st.session_state.get(f"merge_final_{series.run_id}"):
        st.session_state[f"merge_final_{series.run_id}"] = True
        st.rerun()


if series is not None:
    live()
    if series.done:
        if series.status != "done":
            say("error", f"{series.label}: {series.status}. {series.message}")
        elif series.result.get("scores"):
            st.subheader(plain(f"{series.label}: per-task scores"))
            st.dataframe(charts.score_style(charts.score_frame(series.result)), key="merge_scores")
            st.caption(f"{series.result.get('seconds', 0):.1f} s; stored: Compare, Spectra, Representation, "
                       "Diagnose and Export offer this run.")
            if st.button("LoRA-DV from this merge", key="loradv_from_merge", type="primary",
                         help="learn spectral gains on this merge's singular values with entropy (LoRA-DV preset)"):
                try:
                    loradv_from(series)
                except MergecoreError as exc:
                    say("error", exc)
