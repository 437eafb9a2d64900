"""Plotly figures and tables the pages share (no computation beyond reshaping mergecore output)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mergecore.runs.compare import score_table

MAX_POINTS = 500


def _thin(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
    """Downsample a trace to at most MAX_POINTS points (keeps the last one)."""
    x, y = np.asarray(xs), np.asarray(ys, dtype=float)
    if len(x) > MAX_POINTS:
        idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).astype(int))
        x, y = x[idx], y[idx]
    return x, y


def loss_figure(history: list, tasks: list[str]) -> go.Figure:
    steps = [(s, p) for kind, s, p in history if kind == "step"]
    fig = go.Figure()
    if steps:
        xs = [s for s, _ in steps]
        x, y = _thin(xs, [p["loss"] for _, p in steps])
        fig.add_trace(go.Scatter(x=x, y=y, name="total", line={"width": 3}))
        for t in tasks:
            x, y = _thin(xs, [p["task_loss"][t] for _, p in steps])
            fig.add_trace(go.Scatter(x=x, y=y, name=t, line={"dash": "dot"}))
    fig.update_layout(title="Loss (total and per task)", xaxis_title="step", yaxis_title="loss", height=360,
                      margin={"t": 40, "b": 30})
    return fig


def coef_figure(history: list, tasks: list[str]) -> go.Figure:
    """Coefficient trajectories: one line per task (layer-wise: mean over modules, band = min..max)."""
    steps = [(s, np.asarray(p["coefs"], dtype=float)) for kind, s, p in history if kind == "step"]
    fig = go.Figure()
    if steps:
        xs = [s for s, _ in steps]
        labels = tasks if steps[0][1].shape[-1] == len(tasks) else ["mean gain (spectral)"]
        for k, t in enumerate(labels):
            x, y = _thin(xs, [c[..., k].mean() for _, c in steps])
            fig.add_trace(go.Scatter(x=x, y=y, name=t))
    fig.update_layout(title="Merge coefficients (mean over modules)", xaxis_title="step", yaxis_title="coefficient",
                      height=360, margin={"t": 40, "b": 30})
    return fig


def collapse_figure(evals: list, tasks: list[str]) -> go.Figure:
    """Metric vs confidence vs confidently-wrong share over training (the collapse signature)."""
    fig = go.Figure()
    xs = [s for s, _ in evals]
    for key, dash in (("score", "solid"), ("confidence", "dash"), ("confidently_wrong", "dot")):
        scale = 1.0 if key == "score" else 100.0
        ys = [np.mean([p[key][t] for t in tasks]) * scale for _, p in evals]
        fig.add_trace(go.Scatter(x=np.asarray(xs), y=np.asarray(ys), name=key.replace("_", " ") + " (avg %)",
                                 line={"dash": dash}, mode="lines+markers"))
    fig.update_layout(title="Score, confidence and confidently-wrong share (evaluation split)",
                      xaxis_title="step", yaxis_title="percent", height=320, margin={"t": 40, "b": 30})
    return fig


def score_frame(result: dict) -> pd.DataFrame:
    """Per-task scores of a run next to its baselines, with average and ANP rows (NaN where undefined)."""
    base = result.get("baselines", {})
    cols = {**{k: base[k] for k in ("pre-trained", "experts", "uniform") if k in base}, "this run": result["scores"]}
    t = score_table(cols, base.get("experts"))
    return pd.DataFrame(t.values, index=list(t.index), columns=list(t.columns)).round(3)


def score_style(df: pd.DataFrame):
    """Scores with 2 decimals, ANP with 3, undefined as '-' (never 'nan' or 'None')."""
    style = df.style.format("{:.2f}", na_rep="-")
    if "ANP" in df.index:
        style = style.format("{:.3f}", na_rep="-", subset=pd.IndexSlice[["ANP"], :])
    return style
