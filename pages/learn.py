"""Learn: choose objective and granularity, start/stop, watch loss and coefficients live."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from mergecore.errors import MergecoreError
from mergecore.learn.params import PRESETS, LearnParams, apply_preset
from pages import charts
from pages.common import current_bench, current_registry, dataclass_form

st.title("Learn merge coefficients")
bench = current_bench()
if bench is None:
    st.stop()
reg = current_registry()
live_area = st.container()  # progress, charts and scores of the current run, above the settings

with st.expander("Settings", expanded=True):
    preset = st.selectbox("Paper preset", ["(none)"] + list(PRESETS), key="learn_preset",
                          help="loads a paper's hyperparameters into the form")
    base = apply_preset(LearnParams(), None if preset == "(none)" else preset)
    with st.form("learn_form"):
        params = dataclass_form(LearnParams, f"learn_{preset}", base)
        name = st.text_input("Run name (optional)", key="learn_name")
        c1, c2 = st.columns([1, 4])
        start = c1.form_submit_button("Start", type="primary")
        pair = c2.form_submit_button("Entropy vs JS",
                                     help="same settings, entropy then JS, then Compare opens on the pair")

if start or pair:
    try:
        if pair:
            runs = [replace(params, objective=o) for o in ("entropy", "js")]
            jobs = reg.start_sequence(bench, runs, [f"{o}-{params.granularity}" for o in ("entropy", "js")])
            st.session_state["learn_pair"] = [j.run_id for j in jobs]
            st.session_state["pair_opened"] = False
        else:
            jobs = [reg.start(bench, params, name=name or None)]
            st.session_state["learn_pair"] = None
        st.session_state["learn_run"] = jobs[0].run_id
        st.query_params["run"] = jobs[0].run_id
    except MergecoreError as exc:
        st.error(str(exc))

run_id = st.session_state.get("learn_run") or st.query_params.get("run")
pair_ids = st.session_state.get("learn_pair") or []
if pair_ids:  # follow whichever run of the pair is going
    pending = [r for r in pair_ids if reg.get(r) is not None and not reg.get(r).done]
    run_id = pending[0] if pending else pair_ids[-1]
job = reg.get(run_id) if run_id else None
if pair_ids and job is not None and job.done and not st.session_state.get("pair_opened"):
    st.session_state["pair_opened"] = True
    st.switch_page("pages/compare.py", query_params={"runs": ",".join(pair_ids)})


def render(snapshot: dict) -> None:
    history, steps = snapshot["history"], snapshot["steps"]
    done = sum(1 for kind, _, _ in history if kind == "step")
    st.progress(min(done / max(steps, 1), 1.0), text=f"{snapshot['name']}: step {done}/{steps} ({snapshot['status']})")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.loss_figure(history, bench.tasks.names), key="loss_chart", width="stretch")
    with right:
        st.plotly_chart(charts.coef_figure(history, bench.tasks.names), key="coef_chart", width="stretch")
    evals = [(s, p) for kind, s, p in history if kind == "eval"]
    if evals:
        st.plotly_chart(charts.collapse_figure(evals, bench.tasks.names), key="collapse_chart", width="stretch")


@st.fragment(run_every=0.5 if job is not None and not job.done else None)
def live() -> None:
    if job is None:
        return
    snap = job.snapshot()
    if not job.done and st.button("Stop", key="stop_button"):
        job.cancel()
    render(snap)
    if job.done and not st.session_state.get(f"final_{job.run_id}"):
        st.session_state[f"final_{job.run_id}"] = True
        st.rerun()


with live_area:
    live()
    if job is not None and job.done:
        snap = job.snapshot()
        if snap["status"] == "failed" or snap["message"]:
            (st.error if snap["status"] == "failed" else st.warning)(snap["message"])
        if snap["result"]:
            st.subheader("Per-task scores")
            st.dataframe(charts.score_style(charts.score_frame(snap["result"])), key="final_scores")
    elif job is None and run_id:
        st.info(f"Run {run_id} is not running in this server; open it on the Compare page.")
