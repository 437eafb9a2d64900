"""Compare stored runs side by side: score tables (average, ANP), coefficient stability
(SourceJS Fig. 2), task-wise coefficients, layer x task heatmaps. (Coefficient trajectories and collapse curves
over steps are a run's ``runs.follow.RunSeries``.)

Pure functions over stored run records (``runs.store.Store``) and plain arrays (numpy, float64); the Compare page
and the ``compare`` command draw / print what these return.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mergecore.analysis.stability import stability
from mergecore.forward.coefs import block_index
from mergecore.forward.evaluate import anp, average
from mergecore.numbers import as_float
from mergecore.runs.store import RunRecord, Store

BASELINES = ("pre-trained", "experts", "uniform")


# ----------------------------------------------------------------------------- runs and labels


def run_rows(records: list[RunRecord]) -> list[dict]:
    """One row per run for a chooser: id, name, kind, status, created (local time), average score."""
    return [{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status,
             "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created)),
             "average": as_float(r.result.get("average"))} for r in records]


def parse_run_ids(text: str | None, known: list[str]) -> list[str]:
    """Run ids from a comma-separated string (the page's ``?runs=a,b``), known ones only, in order, no repeats."""
    wanted = [t.strip() for t in (text or "").split(",") if t.strip()]
    return [i for i in dict.fromkeys(wanted) if i in set(known)]


def find_baselines(records: list[RunRecord]) -> tuple[dict[str, dict[str, float]], str | None]:
    """Pre-trained / experts / uniform scores from the first run that stored them, and that run's id."""
    for r in records:
        base = r.result.get("baselines")
        if base:
            return {k: dict(base[k]) for k in BASELINES if k in base}, r.id
    return {}, None


def run_tasks(rec: RunRecord) -> list[str]:
    """Task names of a run in its own order (config, else its scores)."""
    tasks = [t["name"] for t in rec.config.get("tasks", [])]
    return tasks or list(rec.result.get("scores", {}))


def run_modules(rec: RunRecord) -> list[str]:
    return list(rec.config.get("modules", []))


def run_granularity(rec: RunRecord) -> str | None:
    """'task' / 'layer' / 'block' for learned runs, None for runs without learned coefficients."""
    return rec.config.get("params", {}).get("granularity") if rec.kind == "learned" else None


def run_coefs(store: Store, rec: RunRecord) -> np.ndarray | None:
    """The (L, K) coefficient matrix of a learned run (result, else the 'coefs' artifact); None for static runs."""
    if rec.kind != "learned":
        return None
    if rec.result.get("coefs") is not None:
        return np.asarray(rec.result["coefs"], dtype=np.float64)
    if "coefs" in store.artifacts(rec.id):
        return store.get_tensors(rec.id, "coefs")["coefs"].double().numpy()
    steps = store.events(rec.id, "step")  # an interrupted run: its last step
    return np.asarray(steps[-1]["coefs"], dtype=np.float64) if steps else None


# ----------------------------------------------------------------------------- score table


@dataclass(frozen=True)
class Table:
    """A labelled 2-D table: ``values[i, j]`` is row ``index[i]``, column ``columns[j]`` (NaN where missing)."""

    index: tuple[str, ...]
    columns: tuple[str, ...]
    values: np.ndarray

    def cell(self, row: str, col: str) -> float:
        return float(self.values[self.index.index(row), self.columns.index(col)])

    def to_text(self, digits: int = 2, width: int = 15, ints: tuple[str, ...] = ("negatives", "count"),
                corner: str = "") -> str:
        """Plain-text table (rows 'ANP' with 3 decimals, columns in ``ints`` as integers, NaN as '-')."""
        first = max(14, *(len(i) for i in self.index))
        lines = [f"{corner:{first}s}" + "".join(f"{c[: width - 1]:>{width}s}" for c in self.columns)]
        for name, row in zip(self.index, self.values):
            d = 3 if name == "ANP" else digits
            cells = ["-" if not np.isfinite(v) else f"{int(v)}" if c in ints else f"{v:.{d}f}"
                     for c, v in zip(self.columns, row)]
            lines.append(f"{name:{first}s}" + "".join(f"{x:>{width}s}" for x in cells))
        return "\n".join(lines)


def score_table(columns: dict[str, dict[str, float]], experts: dict[str, float] | None = None) -> Table:
    """Tasks (union, first-seen order) x merges, then an 'average' row and, given expert scores, an 'ANP' row.

    Average and ANP of a column are over the tasks it has a score for (``evaluate.average`` / ``anp``)."""
    tasks = list(dict.fromkeys(t for col in columns.values() for t in col))
    names = list(columns)
    vals = np.full((len(tasks) + 1 + bool(experts), len(names)), np.nan)
    for j, n in enumerate(names):
        for i, t in enumerate(tasks):
            vals[i, j] = as_float(columns[n].get(t))  # missing or stored null -> NaN
        vals[len(tasks), j] = average(columns[n])  # NaN when the column has no defined score
        if experts:
            vals[len(tasks) + 1, j] = anp(columns[n], experts)
    index = tasks + ["average"] + (["ANP"] if experts else [])
    return Table(tuple(index), tuple(names), vals)


def score_columns(records: list[RunRecord], baselines: dict[str, dict[str, float]],
                  show: tuple[str, ...] = BASELINES) -> dict[str, dict[str, float]]:
    """Columns for ``score_table``: the chosen baselines, then each run's scores (runs without scores skipped)."""
    cols = {k: baselines[k] for k in show if k in baselines}
    for r in records:
        if r.kind == "baseline":
            cols.update({k: v for k, v in r.result.get("baselines", {}).items() if k in show})
        elif r.result.get("scores"):
            cols[r.label] = dict(r.result["scores"])
    return cols


# ----------------------------------------------------------------------------- coefficients


def free_coefs(coefs: np.ndarray, granularity: str | None, modules: list[str] | None = None) -> np.ndarray:
    """The coefficients that were actually learned: (1, K) task-wise, (G, K) block-wise, (L, K) layer-wise.

    Task- and block-wise runs store one row per module; counting negatives over the repeats would
    inflate them, so the repeated rows are dropped here."""
    coefs = np.asarray(coefs, dtype=np.float64)
    if granularity == "task":
        return coefs[:1]
    if granularity == "block" and modules and len(modules) == len(coefs):
        group, _ = block_index(modules)
        first = [int(np.flatnonzero(group.numpy() == g)[0]) for g in range(int(group.max()) + 1)]
        return coefs[first]
    return coefs


def taskwise(coefs: np.ndarray) -> np.ndarray:
    """(K,) per-task coefficient: the mean over modules (equal to the coefficient for task-wise runs)."""
    return np.asarray(coefs, dtype=np.float64).reshape(-1, np.shape(coefs)[-1]).mean(0)


def stability_table(coef_sets: dict[str, np.ndarray]) -> Table:
    """SourceJS Fig. 2 per run: range, std, number of negative coefficients (of how many), min, max."""
    cols = ("range", "std", "negatives", "count", "min", "max")
    vals = np.full((len(coef_sets), len(cols)), np.nan)
    for i, c in enumerate(coef_sets.values()):
        s = stability(torch.as_tensor(np.asarray(c, dtype=np.float64)))
        vals[i] = [s["range"], s["std"], s["negatives"], int(np.isfinite(c).sum()), s["min"], s["max"]]
    return Table(tuple(coef_sets), cols, vals)


@dataclass(frozen=True)
class Heatmap:
    """One run's layer x task coefficients: ``z[i, k]`` is module ``rows[i]`` (short name), task ``columns[k]``."""

    z: np.ndarray  # (L, K)
    rows: tuple[str, ...]
    columns: tuple[str, ...]


def heatmaps(coef_sets: dict[str, np.ndarray], modules: dict[str, list[str]],
             tasks: dict[str, list[str]]) -> tuple[dict[str, Heatmap], float, float]:
    """Heatmap data per run and one symmetric colour range for all: (maps, -lim, lim), lim = max |c| (>= 1e-6)."""
    maps = {k: Heatmap(np.asarray(v, dtype=np.float64), tuple(short_module_names(modules[k])), tuple(tasks[k]))
            for k, v in coef_sets.items()}
    finite = [float(np.abs(m.z[np.isfinite(m.z)]).max()) for m in maps.values() if np.isfinite(m.z).any()]
    lim = max(max(finite, default=0.0), 1e-6)
    return maps, -lim, lim


_ABBREV = {"attention": "attn", "SelfAttention": "attn", "EncDecAttention": "xattn", "self_attn": "attn",
           "DenseReluDense": "ffn", "intermediate": "ffn_in", "output": "out", "encoder": "enc", "decoder": "dec",
           "mlp": "mlp", "self": None, "layer": None, "layers": None, "block": None, "h": None, "model": None,
           "base_model": None, "transformer": None}


def short_module_names(modules: list[str]) -> list[str]:
    """Readable unique names: common leading parts dropped, filler parts abbreviated
    ('bert.encoder.layer.0.attention.self.query' -> '0.attn.query'); falls back to the stripped names."""
    parts = [m.split(".") for m in modules]
    n = 0
    while parts and all(len(p) > n + 1 and p[n] == parts[0][n] for p in parts):
        n += 1
    stripped = [".".join(p[n:]) for p in parts]
    short = [".".join(a for a in (_ABBREV.get(x, x) for x in p[n:]) if a) for p in parts]
    return short if len(set(short)) == len(short) and all(short) else stripped


# ----------------------------------------------------------------------------- everything for a selection


@dataclass(frozen=True)
class Comparison:
    scores: Table
    baseline_source: str | None  # id of the run whose baselines are shown
    coef_runs: dict[str, np.ndarray]  # label -> (L, K) for runs with coefficients
    granularity: dict[str, str | None]  # label -> task / layer / block
    modules: dict[str, list[str]]  # label -> module names (rows of its coefficients)
    tasks: dict[str, list[str]]  # label -> task names (columns of its coefficients)
    skipped: tuple[str, ...]  # labels of runs without coefficients (static merges)
    stability: Table  # over each run's free coefficients (``free_coefs``)


def compare_runs(store: Store, run_ids: list[str], show: tuple[str, ...] = BASELINES,
                 baselines: dict[str, dict[str, float]] | None = None) -> Comparison:
    """Gather scores and coefficients of the chosen runs (baselines from the runs, else any stored run)."""
    records = [store.get(i) for i in run_ids]
    source = None
    if baselines is None:
        baselines, source = find_baselines(records)
        if not baselines:
            baselines, source = find_baselines(store.list())
    table = score_table(score_columns(records, baselines, show), baselines.get("experts"))
    coefs, gran, modules, tasks, free, skipped = {}, {}, {}, {}, {}, []
    for r in records:
        c, label = run_coefs(store, r), r.label
        if c is None:
            if r.kind != "baseline":
                skipped.append(label)
            continue
        coefs[label], gran[label], tasks[label] = c, run_granularity(r), run_tasks(r)
        mods = run_modules(r)
        modules[label] = mods if len(mods) == len(c) else [f"row {i}" for i in range(len(c))]
        free[label] = free_coefs(c, gran[label], modules[label])
    return Comparison(table, source, coefs, gran, modules, tasks, tuple(skipped), stability_table(free))
