"""Spectra: singular values of task and merged deltas, B/A subspace overlap, divergence matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from mergecore.analysis import lenses
from mergecore.analysis.catalog import compute_lens
from mergecore.errors import MergecoreError
from mergecore.numbers import fmt
from pages.ui import charts
from pages.ui.state import analysis_inputs
from pages.ui.text import say

bench, store, runs = analysis_inputs("Spectra and subspaces", need_runs=False)
chosen = st.multiselect("Runs", list(runs), default=list(runs)[:2], format_func=runs.get, key="spectra_runs",
                        help="finished learned / static runs in this workspace")
section = st.radio("Section", ["Spectra", "Subspaces", "Divergence"], horizontal=True, key="spectra_section")


def heatmap(M, x, y, title: str, zmid=None, key: str = "") -> None:
    fig = go.Figure(go.Heatmap(z=np.asarray(M, dtype=float), x=x, y=y, colorscale="RdBu_r" if zmid is not None else "Viridis",
                               zmid=zmid, text=np.round(np.asarray(M, dtype=float), 2), texttemplate="%{text}"))
    fig.update_layout(title=title, height=380, margin={"t": 40, "b": 30}, yaxis_autorange="reversed")
    st.plotly_chart(charts.text_only(fig), key=key, width="stretch")


try:
    if section == "Spectra":
        with st.spinner("Computing spectra..."):
            results = [compute_lens("spectra", bench, store, rid) for rid in chosen] or [compute_lens("spectra", bench, store, None)]
        base = results[0]
        modules = st.multiselect("Modules", base["modules"], default=base["modules"][:1], key="spectra_modules")
        fig = go.Figure()
        for module in modules:
            short = module.split("encoder.")[-1]
            spectra = {**base["spectra"][module], **{k: v for r in results for k, v in r["spectra"][module].items()}}
            for who, s in spectra.items():
                is_task = who in base["tasks"]
                fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=np.asarray(s), name=f"{who} · {short}",
                                         mode="lines+markers", line={"dash": "dot" if is_task else "solid",
                                                                     "width": 1.5 if is_task else 3}))
        fig.update_layout(title="Singular values per module (tasks dotted, runs solid)", xaxis_title="index",
                          yaxis_title="singular value", yaxis_type="log", height=420, margin={"t": 40, "b": 30})
        st.plotly_chart(charts.text_only(fig), key="spectra_chart", width="stretch")
        st.caption("A merge that keeps every task's top directions shows a long flat head; "
                   "a fast drop means a few shared directions dominate.")
        scales = [(runs[rid], r["spectral"]) for rid, r in zip(chosen, results) if r["spectral"]]
        for name, spectral in scales:
            sfig = go.Figure([go.Bar(x=np.arange(1, len(spectral[m]["scale"]) + 1), y=spectral[m]["scale"],
                                     name=m.split("encoder.")[-1]) for m in modules if m in spectral])
            sfig.update_layout(title=f"{name}: learned scale per singular value", xaxis_title="index",
                               yaxis_title="scale", height=320, margin={"t": 40, "b": 30})
            st.plotly_chart(charts.text_only(sfig), key=f"scale_{name}", width="stretch")
        rows = pd.DataFrame([row for r in results for row in r["rows"] if row["kind"] == "run"] +
                            [row for row in base["rows"] if row["kind"] == "task"])
        pivot = rows.pivot_table(index="block", columns="model", values="effective_rank", aggfunc="mean", sort=False)
        heatmap(pivot.to_numpy(), list(pivot.columns), list(pivot.index),
                "Effective rank per layer (mean over the layer's modules)", key="erank_heatmap")
        st.caption("Rows: transformer layers; columns: each task's expert and each run. "
                   "Higher effective rank = the update spreads its energy over more directions.")
    elif section == "Subspaces":
        with st.spinner("Computing subspace overlaps and OSRM features..."):
            sub = compute_lens("subspaces", bench, store, None)
        blocks = list(dict.fromkeys(sub["blocks"]))
        choice = st.selectbox("Modules", ["all modules (mean)"] + blocks + sub["modules"],
                              key="subspace_choice")
        selected = (sub["modules"] if choice.startswith("all") else
                    [m for m, b in zip(sub["modules"], sub["blocks"]) if choice == b] or [choice])
        t = sub["tasks"]
        left, right = st.columns(2)
        with left:
            heatmap(lenses.aggregate(sub["b_overlap"], selected), t, t, "B column spaces: overlap (mean cos²)", key="b_overlap")
        with right:
            heatmap(lenses.aggregate(sub["a_overlap"], selected), t, t, "A row spaces: overlap (mean cos²)", key="a_overlap")
        st.caption("Pico's claim: tasks share output (B) directions while input (A) spaces stay task-specific, "
                   "i.e. the left map brighter off the diagonal than the right.")
        left, right = st.columns(2)
        with left:
            heatmap(lenses.aggregate(sub["cosine"], selected), t, t, "Task-vector cosine", zmid=0.0, key="cosine")
        with right:
            if sub["interference"]:
                heatmap(lenses.aggregate(sub["interference"], selected), [f"adapter {x}" for x in t],
                        [f"{x} features" for x in t], "OSRM interference ‖B_j A_j H_iᵀ‖ per example", key="osrm")
        shared = sum(len(sub["shared"][m]) for m in selected)
        st.caption(f"Shared output directions (contained in ≥ 2 tasks' B spaces, Pico) in the selection: {shared}. "
                   "Interference: row = task whose features are fed, column = adapter; off-diagonal = harm to others.")
    else:
        with st.spinner("Running every expert on every task..."):
            div = compute_lens("divergence", bench, store, None)
        t = div["tasks"]
        kind = st.radio("Divergence", ["js", "kl"], horizontal=True, key="div_kind")
        left, right = st.columns(2)
        with left:
            heatmap(div[kind], [f"expert {x}" for x in t], [f"on {x}" for x in t],
                    f"D_X_i(θ_i ‖ θ_j), {kind.upper()}", key="div_matrix")
        with right:
            heatmap(div["scores"], [f"expert {x}" for x in t], [f"on {x}" for x in t], "Score of expert j on task i",
                    key="score_matrix")
        st.caption(f"DivMerge: divergence predicts the score drop. Spearman(divergence, score drop) = "
                   f"{fmt(div[f'spearman_{kind}'], 3)} over all off-diagonal pairs.")
except MergecoreError as exc:
    say("error", exc)
