"""Representation: how far the merged model's hidden states drift from each expert's (LoRA-DV Fig. 2b)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mergecore.analysis.catalog import compute_lens
from mergecore.errors import MergecoreError
from pages.ui import charts
from pages.ui.state import analysis_inputs
from pages.ui.text import say

bench, store, runs = analysis_inputs("Representation bias")
chosen = st.multiselect("Runs", list(runs), default=list(runs)[:2], format_func=runs.get, key="rep_runs")
try:
    with st.spinner("Running each merge and each expert on the experts' tasks..."):
        results = {runs[rid]: compute_lens("representation", bench, store, rid) for rid in chosen}
except MergecoreError as exc:
    say("error", exc)
    st.stop()
if not results:
    st.stop()

tasks = next(iter(results.values()))["tasks"]  # label tasks; generative ones are listed as skipped
for item in next(iter(results.values())).get("skipped", []):
    say("info", f"{item['task']}: {item['reason']}" if isinstance(item, dict) else item)
bars = go.Figure([go.Bar(x=tasks, y=[r["mean"][t] for t in tasks], name=name) for name, r in results.items()])
bars.update_layout(title="Representation bias per task (mean over layers)", xaxis_title="task",
                   yaxis_title="mean |h_merged − h_expert|", barmode="group", height=380, margin={"t": 40, "b": 30})
st.plotly_chart(charts.text_only(bars), key="rep_bars", width="stretch")
st.caption("Lower is better: the merged model sees each task's inputs the way that task's expert does.")

task = st.selectbox("Task for the per-layer view", ["mean over tasks"] + tasks, key="rep_task")
lines = go.Figure()
for name, r in results.items():
    y = np.mean([r["bias"][t] for t in tasks], axis=0) if task == "mean over tasks" else np.asarray(r["bias"][task])
    lines.add_trace(go.Scatter(x=r["layers"], y=y, name=name, mode="lines+markers"))
lines.update_layout(title=f"Representation bias per layer ({task})", xaxis_title="layer",
                    yaxis_title="mean |h_merged − h_expert|", height=380, margin={"t": 40, "b": 30})
st.plotly_chart(charts.text_only(lines), key="rep_lines", width="stretch")
st.caption("Bias usually grows with depth as merged updates compound; a run that flattens the curve keeps "
           "later layers closer to the experts.")
