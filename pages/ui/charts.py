"""Plotly figures and tables the pages share (no computation beyond reshaping mergecore output)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from mergecore.runs.compare import score_table
from mergecore.runs.follow import RunSeries, thin

COLORS = qualitative.Plotly  # colour = task (or metric)
RUN_COLORS = qualitative.Dark2  # colour of a run's total loss
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # dash = run
METRICS = (("score", "score"), ("confidence", "mean confidence"), ("confidently_wrong", "confidently wrong"))


_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def html_text(value):
    """Plotly draws ``<a href>``, ``<b>``, ... in its texts and decodes entities only outside tags: escaped
    strings show as typed. Numbers are left alone."""
    if isinstance(value, str):
        return value.translate(_HTML)
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind in "OU"):
        return [html_text(v) for v in value]
    return value


def text_only(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` whose texts that may hold outside text (trace names and categories: task, run, module
    names; titles and subplot titles) render literally: the Plotly share of ``pages.ui.text.plain``."""
    fig = go.Figure(fig)
    for trace in fig.data:
        for key in ("name", "x", "y", "text", "hovertext"):
            if key in trace and trace[key] is not None:
                trace[key] = html_text(trace[key])
    fig.for_each_annotation(lambda a: a.update(text=html_text(a.text)))
    if fig.layout.title.text:
        fig.layout.title.text = html_text(fig.layout.title.text)
    return fig


def _layout(fig: go.Figure, title: str, ytitle: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=ytitle, height=height, margin={"t": 40, "b": 30},
                      legend={"font": {"size": 11}}, uirevision="keep")  # uirevision: zoom survives redraws
    return fig


def _run_legend(fig: go.Figure, series: list[RunSeries]) -> None:
    """One legend entry per run showing its dash (the traces themselves are named by task or quantity)."""
    for i, s in enumerate(series):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=s.label, legendgroup="runs",
                                 legendgrouptitle_text="runs", line={"color": "#444", "dash": DASHES[i % len(DASHES)]}))


def loss_figure(series: list[RunSeries]) -> go.Figure:
    """Total loss per run, colour and dash = run (one run: also each task's loss, dotted)."""
    fig = go.Figure()
    for i, s in enumerate(series):
        x, y = thin(s.steps, s.loss)
        fig.add_trace(go.Scatter(x=x, y=y, name=s.label if len(series) > 1 else "total",
                                 line={"width": 3, "dash": DASHES[i % len(DASHES)], "color": RUN_COLORS[i % len(RUN_COLORS)]}))
        if len(series) == 1:
            for k, (task, ys) in enumerate(s.task_loss.items()):
                x, y = thin(s.steps, ys)
                fig.add_trace(go.Scatter(x=x, y=y, name=task, line={"dash": "dot", "color": COLORS[k % len(COLORS)]}))
    return _layout(fig, "Loss (total" + (" per run)" if len(series) > 1 else " and per task)"), "loss")


def coef_figure(series: list[RunSeries], tasks: list[str]) -> go.Figure:
    """Coefficient trajectories, mean over modules: colour = task, dash = run (spectral: the mean gain)."""
    fig = go.Figure()
    for i, s in enumerate(series):
        if not s.coefs:
            continue
        width = len(s.coefs[-1])
        labels = tasks if width == len(tasks) else ["mean gain (spectral)"]
        for k, task in enumerate(labels):
            ys = [c[k] if width == len(tasks) else float(c.mean()) for c in s.coefs]
            x, y = thin(s.steps, ys)
            fig.add_trace(go.Scatter(x=x, y=y, name=task, legendgroup=task, showlegend=i == 0,
                                     line={"color": COLORS[k % len(COLORS)], "dash": DASHES[i % len(DASHES)]}))
    if len(series) > 1:
        _run_legend(fig, series)
    return _layout(fig, "Merge coefficients (mean over modules)", "coefficient")


def collapse_figure(series: list[RunSeries]) -> go.Figure:
    """The collapse signature from the periodic evaluations: score, mean confidence and confidently-wrong
    share (averaged over tasks, percent); colour = quantity, dash = run."""
    fig = go.Figure()
    for i, s in enumerate(series):
        xs = [step for step, _ in s.evals]
        for k, (key, title) in enumerate(METRICS):
            scale = 1.0 if key == "score" else 100.0
            ys = [values[key] * scale for _, values in s.evals]
            fig.add_trace(go.Scatter(x=xs, y=ys, name=title, legendgroup=key, showlegend=i == 0, mode="lines+markers",
                                     line={"color": COLORS[k], "dash": DASHES[i % len(DASHES)]}))
    if len(series) > 1:
        _run_legend(fig, series)
    return _layout(fig, "Score, confidence and confidently-wrong share (evaluation split, avg %)", "percent", 320)


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
