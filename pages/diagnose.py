"""Diagnose: is the merge calibrated, or confidently wrong where its experts were right?"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mergecore.analysis import forward_lenses as fl
from mergecore.analysis.catalog import compute_lens
from mergecore.errors import MergecoreError
from pages.ui import charts
from pages.ui.state import analysis_inputs
from pages.ui.text import plain, say

bench, store, runs = analysis_inputs("Diagnose a merge")
ids = list(runs)
left, right = st.columns(2)
first = left.selectbox("Run", ids, format_func=runs.get, key="diag_run")
second = right.selectbox("Compare with (optional)", ["(none)"] + [i for i in ids if i != first],
                         format_func=lambda i: runs.get(i, i), key="diag_other")
task = st.selectbox("Task", ["all tasks"] + bench.tasks.names, key="diag_task")
chosen = [first] + ([] if second == "(none)" else [second])
try:
    with st.spinner("Evaluating the merge and its experts..."):
        results = [compute_lens("calibration", bench, store, rid) for rid in chosen]
except MergecoreError as exc:
    say("error", exc)
    st.stop()


def reliability(lens: dict, key: str) -> None:
    b = lens["bins"]["all" if task == "all tasks" else task]
    edges = np.asarray(b["edges"])
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=np.asarray(b["accuracy"], dtype=float),
                           width=np.diff(edges) * 0.95, name="accuracy", customdata=b["count"],
                           hovertemplate="conf %{x:.2f}: acc %{y:.2f} (%{customdata} examples)"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "gray"}, name="perfect"))
    fig.update_layout(title=f"Reliability (ECE {b['ece']:.3f})", xaxis_title="confidence", yaxis_title="accuracy",
                      xaxis_range=[0, 1], yaxis_range=[0, 1], height=340, margin={"t": 40, "b": 30}, showlegend=False)
    st.plotly_chart(charts.text_only(fig), key=f"rel_{key}", width="stretch")


def histogram(ex: pd.DataFrame, key: str) -> None:
    fig = go.Figure([go.Histogram(x=ex.loc[ex["correct"] == ok, "merged_conf"].to_numpy(), name=name,
                                  xbins={"start": 0, "end": 1.0001, "size": 0.05}, opacity=0.6,
                                  marker_color=color)
                     for ok, name, color in ((True, "correct", "#2ca02c"), (False, "wrong", "#d62728"))])
    fig.update_layout(title="Confidence of correct vs wrong predictions", barmode="overlay", xaxis_title="confidence",
                      yaxis_title="examples", height=300, margin={"t": 40, "b": 30})
    st.plotly_chart(charts.text_only(fig), key=f"hist_{key}", width="stretch")


def ece_bars(lens: dict, key: str) -> None:
    tasks = lens["tasks"]
    fig = go.Figure([go.Bar(x=tasks, y=[lens["summary"][t]["ece"] for t in tasks], name="merged"),
                     go.Bar(x=tasks, y=[lens["expert_summary"][t]["ece"] for t in tasks], name="expert")])
    fig.update_layout(title="ECE per task", xaxis_title="task", yaxis_title="ECE", barmode="group", height=300,
                      margin={"t": 40, "b": 30})
    st.plotly_chart(charts.text_only(fig), key=f"ece_{key}", width="stretch")


columns = st.columns(len(results))
for n, (rid, lens, col) in enumerate(zip(chosen, results, columns)):
    ex = pd.DataFrame(lens["examples"])
    ex = ex if task == "all tasks" else ex[ex["task"] == task]
    with col:
        st.subheader(plain(runs[rid]))
        m = lens["overall"] if task == "all tasks" else lens["summary"][task]
        a, b, c = st.columns(3)
        a.metric("ECE", f"{m['ece']:.3f}")
        b.metric("Confidently wrong", f"{100 * m['confidently_wrong']:.1f}%", help="wrong with confidence ≥ 0.9, share of all")
        c.metric("Agreement with expert", f"{100 * m['agreement']:.1f}%")
        reliability(lens, str(n))
        histogram(ex, str(n))
        ece_bars(lens, str(n))
st.caption("Look for bars below the diagonal at high confidence and a 'wrong' mass near 1.0: the merge has "
           "collapsed onto confident predictions its experts would not make.")

st.subheader("Examples: merged confident, expert disagrees first")
only = st.checkbox("Only disagreements with the expert", value=True, key="diag_only")
query = st.text_input("Filter text", key="diag_query")
ex = pd.DataFrame(fl.sort_examples(results[0]["examples"]))
ex = ex if task == "all tasks" else ex[ex["task"] == task]
ex = ex[~ex["agree"]] if only else ex
ex = ex[ex["text"].str.contains(query, case=False, regex=False)] if query else ex
st.dataframe(ex[["task", "text", "label", "expert_pred", "expert_conf", "merged_pred", "merged_conf"]],
             key="diag_table", hide_index=True, height=360,
             column_config={"expert_conf": st.column_config.NumberColumn(format="%.2f"),
                            "merged_conf": st.column_config.NumberColumn(format="%.2f")})
