"""Plotly figures and tables the pages share (no computation beyond reshaping mergecore output).

One home for how a run looks: one palette, one dash per run, one set of evaluation metrics, one score frame
and one figure per concept (loss, coefficient trajectories, collapse curves), each drawn from a
``RunSeries`` per run, so the Learn page, the Compare page and the live view (pages/ui/live_view.js gets
these constants and layouts) show the same run the same way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from mergecore.runs import compare as cmp
from mergecore.runs.follow import RunSeries, thin

COLORS = qualitative.Plotly  # colour = task, metric (curves) or run (bars)
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


def dash(i: int) -> str:
    """The dash of the ``i``-th run of a figure."""
    return DASHES[i % len(DASHES)]


def color(k: int) -> str:
    """The colour of the ``k``-th task, metric or (in bar charts) run."""
    return COLORS[k % len(COLORS)]


# ----------------------------------------------------------------------------- curves over steps, a RunSeries per run


def _layout(fig: go.Figure, title: str, ytitle: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=ytitle, height=height, margin={"t": 40, "b": 30},
                      legend={"font": {"size": 11}}, uirevision="keep")  # uirevision: zoom survives redraws
    return fig


def _run_legend(fig: go.Figure, series: list[RunSeries]) -> None:
    """One legend entry per run showing its dash (the traces themselves are named by task or quantity)."""
    for i, s in enumerate(series):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=s.label, legendgroup="runs",
                                 legendgrouptitle_text="runs", line={"color": "#444", "dash": dash(i)}))


def loss_figure(series: list[RunSeries]) -> go.Figure:
    """Total loss per run, colour and dash = run (one run: also each task's loss, dotted)."""
    fig = go.Figure()
    for i, s in enumerate(series):
        x, y = thin(s.steps, s.loss)
        fig.add_trace(go.Scatter(x=x, y=y, name=s.label if len(series) > 1 else "total",
                                 line={"width": 3, "dash": dash(i), "color": RUN_COLORS[i % len(RUN_COLORS)]}))
        if len(series) == 1:
            for k, (task, ys) in enumerate(s.task_loss.items()):
                x, y = thin(s.steps, ys)
                fig.add_trace(go.Scatter(x=x, y=y, name=task, line={"dash": "dot", "color": color(k)}))
    return _layout(fig, "Loss (total" + (" per run)" if len(series) > 1 else " and per task)"), "loss")


def coef_figure(series: list[RunSeries], tasks: list[str] | dict[str, list[str]]) -> go.Figure:
    """Coefficient trajectories, mean over modules: colour = task, dash = run (spectral: the mean gain).

    ``tasks``: the task names of every run, or run id -> its task names (runs of different task sets)."""
    fig, shown = go.Figure(), set()
    for i, s in enumerate(series):
        if not s.coefs:
            continue
        names = tasks.get(s.run_id, []) if isinstance(tasks, dict) else tasks
        width = len(s.coefs[-1])
        labels = names if width == len(names) else ["mean gain (spectral)"]
        for k, task in enumerate(labels):
            ys = [c[k] if width == len(names) else float(c.mean()) for c in s.coefs]
            x, y = thin(s.steps, ys)
            fig.add_trace(go.Scatter(x=x, y=y, name=task, legendgroup=task, showlegend=task not in shown,
                                     line={"color": color(k), "dash": dash(i)}))
            shown.add(task)
    if len(series) > 1:
        _run_legend(fig, series)
    return _layout(fig, "Merge coefficients: trajectories (mean over modules)", "coefficient")


def collapse_figure(series: list[RunSeries]) -> go.Figure:
    """The collapse signature from the periodic evaluations: score, mean confidence and confidently-wrong
    share (averaged over tasks, percent); colour = quantity, dash = run. Confidence rising while the score
    falls is the collapse (the merged model confidently wrong)."""
    fig = go.Figure()
    for i, s in enumerate(series):
        xs = [step for step, _ in s.evals]
        for k, (key, title) in enumerate(METRICS):
            scale = 1.0 if key == "score" else 100.0
            ys = [values[key] * scale for _, values in s.evals]
            fig.add_trace(go.Scatter(x=xs, y=ys, name=title, legendgroup=key, showlegend=i == 0, mode="lines+markers",
                                     line={"color": color(k), "dash": dash(i)}))
    if len(series) > 1:
        _run_legend(fig, series)
    return _layout(fig, "Collapse · Score, confidence and confidently-wrong share (evaluation split, avg %)",
                   "percent", 320)


# ----------------------------------------------------------------------------- tables


def table_frame(t: cmp.Table) -> pd.DataFrame:
    """A mergecore table (scores, stability) as a DataFrame, NaN where undefined."""
    return pd.DataFrame(t.values, index=list(t.index), columns=list(t.columns))


def score_frame(runs: list[RunSeries] | dict) -> pd.DataFrame:
    """Per-task scores of finished runs next to the first one's baselines, with average and ANP rows (NaN where
    undefined): a column per run label, or 'this run' for one run (``runs`` may also be one run's result)."""
    results = {"this run": runs} if isinstance(runs, dict) else \
        {"this run": runs[0].result} if len(runs) == 1 else {s.label: s.result for s in runs}
    base = next(iter(results.values())).get("baselines", {})
    cols = {**{k: base[k] for k in cmp.BASELINES if k in base}, **{n: r["scores"] for n, r in results.items()}}
    return table_frame(cmp.score_table(cols, base.get("experts")))


def score_style(df: pd.DataFrame):
    """Scores with 2 decimals, ANP with 3, undefined as '-' (never 'nan' or 'None')."""
    style = df.style.format("{:.2f}", na_rep="-")
    if "ANP" in df.index:
        style = style.format("{:.3f}", na_rep="-", subset=pd.IndexSlice[["ANP"], :])
    return style


def stability_style(t: cmp.Table):
    """The stability table: 3 decimals, counts as integers, undefined as '-'."""
    return table_frame(t).style.format("{:.3f}", na_rep="-").format("{:.0f}", na_rep="-", subset=["negatives", "count"])


# ----------------------------------------------------------------------------- learned coefficients side by side


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
                                 hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra>" + html_text(label) + "</extra>"), 1, j + 1)
        fig.update_yaxes(autorange="reversed", showticklabels=j == 0, row=1, col=j + 1)
    rows = max(len(m.rows) for m in maps.values())
    fig.update_layout(title="Layer x task coefficients (shared colour scale, centred on 0)",
                      height=min(160 + 22 * rows, 1400), margin={"t": 70, "b": 30})
    return fig
