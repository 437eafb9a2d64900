"""Compare: stored runs and baselines side by side (scores, ANP, coefficients, stability,
layer x task heatmaps, trajectories, collapse curves). Opens on ``?runs=id,id``."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from mergecore.errors import MergecoreError
from mergecore.runs import compare as cmp
from mergecore.runs.follow import RunSeries
from pages.ui import charts
from pages.ui.state import current_bench, current_registry
from pages.ui.text import say


def recent_finished(records, n: int = 2) -> list[str]:
    """The ``n`` most recent finished runs (oldest first): what Compare opens on without ``?runs=``."""
    done = sorted((r for r in records if r.status == "done"), key=lambda r: r.created, reverse=True)
    return [r.id for r in reversed(done[:n])]


st.title("Compare runs")
store = current_registry().store
records = [r for r in store.list() if r.kind != "baseline"]
if not records:
    st.info("No stored runs yet: learn coefficients on the Learn page or run a static merge on the Merge page.")
    st.stop()

rows = {row["id"]: row for row in cmp.run_rows(records)}
wanted = st.query_params.get("runs", "")
if wanted != st.session_state.get("compare_seen_qp"):  # opened (or re-opened) with ?runs=...
    st.session_state["compare_seen_qp"] = wanted
    st.session_state["compare_runs"] = cmp.parse_run_ids(wanted, list(rows)) if wanted else recent_finished(records)
with st.expander(f"Stored runs ({len(rows)})"):
    run_list = pd.DataFrame(list(rows.values())).set_index("id")
    st.dataframe(run_list.style.format({"average": "{:.2f}"}, na_rep="-"), key="compare_run_list", width="stretch")
chosen = st.multiselect(
    "Runs", list(rows), key="compare_runs",
    format_func=lambda i: f"{rows[i]['name']} · {rows[i]['kind']} · {rows[i]['status']} · {rows[i]['created']}"
                          + (f" · avg {rows[i]['average']:.1f}" if rows[i]["average"] == rows[i]["average"] else ""))
show = st.multiselect("Baselines", list(cmp.BASELINES), default=list(cmp.BASELINES), key="compare_baselines")
st.session_state["compare_seen_qp"] = ",".join(chosen)
st.query_params["runs"] = ",".join(chosen)
if not chosen:
    st.info("Choose runs to compare.")
    st.stop()

try:
    c = cmp.compare_runs(store, chosen, tuple(show))
except MergecoreError as exc:
    say("error", exc)
    st.stop()

st.subheader("Scores")
if c.baseline_source is None and show:
    st.caption("No stored run holds baseline scores yet.")
    if st.button("Compute baselines (loads the model)", key="compare_compute_baselines"):
        bench = current_bench()
        if bench is not None:
            from mergecore.runs.runner import record_baselines

            record_baselines(bench, store)
            st.rerun()
elif c.baseline_source and show:
    say("caption", f"Baselines from run {c.baseline_source}; ANP = mean over tasks of score / expert score.")
st.dataframe(charts.score_style(charts.table_frame(c.scores)), key="compare_scores", width="stretch")

label_ids = {store.get(i).label: i for i in chosen}
if c.skipped:
    say("caption", "No learned coefficients (static merges), left out of the coefficient figures: " + ", ".join(c.skipped))
if not c.coef_runs:
    st.stop()

st.subheader("Coefficients")
st.plotly_chart(charts.text_only(charts.coef_bars(c)), key="compare_coef_bars", width="stretch")
st.caption("Stability over the learned coefficients (task-wise: K, block-wise: blocks x K, layer-wise: L x K)")
st.dataframe(charts.stability_style(c.stability), key="compare_stability", width="stretch")
st.plotly_chart(charts.text_only(charts.stability_bars(c.stability)), key="compare_stability_bars", width="stretch")
st.plotly_chart(charts.text_only(charts.heatmap_figure(c)), key="compare_heatmaps", width="stretch")

st.subheader("Training curves")
series = [RunSeries(label_ids[label]) for label in c.coef_runs]  # every event of each learned run, read once
for s in series:
    s.update(store)
st.plotly_chart(charts.text_only(charts.coef_figure(series, {label_ids[k]: v for k, v in c.tasks.items()})),
                key="compare_trajectories", width="stretch")
if any(s.evals for s in series):
    st.caption("Confidence rising while the score falls is the collapse (merged model confidently wrong).")
    st.plotly_chart(charts.text_only(charts.collapse_figure(series)), key="compare_collapse", width="stretch")
else:
    st.caption("No evaluation events in these runs (eval_every = 0): no collapse curves.")
