"""Compare: stored runs and baselines side by side (scores, ANP, coefficients, stability,
layer x task heatmaps, trajectories, collapse curves). Opens on ``?runs=id,id``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import DEFAULT_PLOTLY_COLORS
from plotly.subplots import make_subplots

from mergecore.errors import MergecoreError
from mergecore.runs import compare as cmp
from pages.ui import charts
from pages.ui.state import current_bench, current_registry
from pages.ui.text import say

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
METRICS = (("score", "score (avg %)"), ("confidence", "confidence (avg %)"),
           ("confidently_wrong", "confidently wrong (avg %)"))


def color(i: int) -> str:
    return DEFAULT_PLOTLY_COLORS[i % len(DEFAULT_PLOTLY_COLORS)]


def table_frame(t: cmp.Table) -> pd.DataFrame:
    return pd.DataFrame(t.values, index=list(t.index), columns=list(t.columns))


def coef_bars(c: cmp.Comparison) -> go.Figure:
    fig = go.Figure()
    for label, coefs in c.coef_runs.items():
        fig.add_trace(go.Bar(x=np.asarray(c.tasks[label]), y=cmp.taskwise(coefs), name=label))
    fig.update_layout(barmode="group", title="Task-wise coefficients (layer/block-wise runs: mean over modules)",
                      yaxis_title="coefficient", height=360, margin={"t": 40, "b": 30})
    return fig


def stability_bars(t: cmp.Table) -> go.Figure:
    figs = ("range", "std", "negatives")
    fig = make_subplots(1, 3, subplot_titles=("range (max - min)", "standard deviation", "negative coefficients"))
    for j, name in enumerate(figs):
        y = t.values[:, t.columns.index(name)]
        text = ["-" if not np.isfinite(v) else f"{v:.0f}" if name == "negatives" else f"{v:.3g}" for v in y]
        fig.add_trace(go.Bar(x=np.asarray(t.index), y=y, text=text,
                             textposition="outside", cliponaxis=False,
                             marker_color=[color(i) for i in range(len(t.index))], showlegend=False), 1, j + 1)
        top = float(np.nanmax(y)) if np.isfinite(y).any() else 0.0
        fig.update_yaxes(range=[0, max(top, 1.0 if name == "negatives" else 1e-3) * 1.2], row=1, col=j + 1)
    fig.update_layout(title="Coefficient stability (SourceJS Fig. 2)", height=340, margin={"t": 70, "b": 30})
    return fig


def heatmap_figure(c: cmp.Comparison) -> go.Figure:
    maps, zmin, zmax = cmp.heatmaps(c.coef_runs, c.modules, c.tasks)
    fig = make_subplots(1, len(maps), subplot_titles=list(maps), horizontal_spacing=0.12 / max(len(maps), 1))
    for j, (label, m) in enumerate(maps.items()):
        fig.add_trace(go.Heatmap(z=m.z, x=np.asarray(m.columns), y=np.asarray(m.rows), zmin=zmin, zmax=zmax, zmid=0,
                                 colorscale="RdBu", showscale=j == 0, name=label,
                                 hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra>" + charts.html_text(label) + "</extra>"), 1, j + 1)
        fig.update_yaxes(autorange="reversed", showticklabels=j == 0, row=1, col=j + 1)
    rows = max(len(m.rows) for m in maps.values())
    fig.update_layout(title="Layer x task coefficients (shared colour scale, centred on 0)",
                      height=min(160 + 22 * rows, 1400), margin={"t": 70, "b": 30})
    return fig


def trajectory_figure(store, runs: dict[str, str], c: cmp.Comparison) -> go.Figure:
    fig = go.Figure()
    for r, (label, run_id) in enumerate(runs.items()):
        traj = cmp.trajectory(store, run_id)
        for k, task in enumerate(c.tasks[label][: traj.coefs.shape[1]]):
            fig.add_trace(go.Scatter(x=traj.steps, y=traj.coefs[:, k], name=f"{task} · {label}", legendgroup=label,
                                     line={"color": color(k), "dash": DASHES[r % len(DASHES)]}))
    fig.update_layout(title="Coefficient trajectories (mean over modules; colour = task, dash = run)",
                      xaxis_title="step", yaxis_title="coefficient", height=400, margin={"t": 40, "b": 30})
    return fig


def collapse_figure(store, runs: dict[str, str]) -> tuple[go.Figure, int]:
    fig, drawn = go.Figure(), 0
    for r, (label, run_id) in enumerate(runs.items()):
        cur = cmp.collapse(store, run_id)
        drawn += len(cur.steps) > 0
        for i, (key, name) in enumerate(METRICS):
            fig.add_trace(go.Scatter(x=cur.steps, y=getattr(cur, key), name=f"{name} · {label}", mode="lines+markers",
                                     legendgroup=label, line={"color": color(i), "dash": DASHES[r % len(DASHES)]}))
    fig.update_layout(title="Collapse: score vs confidence vs confidently-wrong share (avg over tasks; dash = run)",
                      xaxis_title="step", yaxis_title="percent", height=400, margin={"t": 40, "b": 30})
    return fig, drawn


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
st.dataframe(charts.score_style(table_frame(c.scores)), key="compare_scores", width="stretch")

label_ids = {store.get(i).label: i for i in chosen}
if c.skipped:
    say("caption", "No learned coefficients (static merges), left out of the coefficient figures: " + ", ".join(c.skipped))
if not c.coef_runs:
    st.stop()

st.subheader("Coefficients")
st.plotly_chart(charts.text_only(coef_bars(c)), key="compare_coef_bars", width="stretch")
st.caption("Stability over the learned coefficients (task-wise: K, block-wise: blocks x K, layer-wise: L x K)")
st.dataframe(table_frame(c.stability).style.format("{:.3f}", na_rep="-").format("{:.0f}", na_rep="-",
                                                                                subset=["negatives", "count"]),
             key="compare_stability", width="stretch")
st.plotly_chart(charts.text_only(stability_bars(c.stability)), key="compare_stability_bars",
                width="stretch")
st.plotly_chart(charts.text_only(heatmap_figure(c)), key="compare_heatmaps", width="stretch")

st.subheader("Training curves")
learned = {label: label_ids[label] for label in c.coef_runs}
st.plotly_chart(charts.text_only(trajectory_figure(store, learned, c)), key="compare_trajectories",
                width="stretch")
fig, drawn = collapse_figure(store, learned)
if drawn:
    st.caption("Confidence rising while the score falls is the collapse (merged model confidently wrong).")
    st.plotly_chart(charts.text_only(fig), key="compare_collapse", width="stretch")
else:
    st.caption("No evaluation events in these runs (eval_every = 0): no collapse curves.")
