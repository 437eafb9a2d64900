"""Following a run live: a compact series grown from the events not seen yet.

A live view keeps one ``RunSeries`` per run and calls ``update(store)`` about once a second: it reads only
the events after the last sequence number it saw, and keeps per step only what the charts draw (total and
per-task loss, the coefficients averaged over modules, the periodic evaluations averaged over tasks), so
the work of a refresh grows with what changed, not with the length of the run. ``thin_index`` is the one
downsampler of a run's series (through ``thin``, every chart of a run the Learn and Compare pages and the live view
draw): at most ``MAX_POINTS`` per trace. ``delta`` is what a browser chart that already
drew some of the run lacks (the app's live view polls it as JSON and extends its traces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mergecore.runs.store import FINAL, RunStore

MAX_POINTS = 400  # per trace, every chart of a run: enough for a smooth curve, bounded for the browser


@dataclass
class RunSeries:
    run_id: str
    name: str = ""
    label: str = ""
    status: str = "running"
    message: str = ""
    total_steps: int = 0
    stage: str = ""  # the text of the last stage event (loading, Stage 1, Stage 2, evaluating, merging, ...)
    stage_key: str = ""
    stage_progress: float = 0.0  # within the current stage, when it reports rows (Stage 1)
    seq: int = -1  # last event seen
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    task_loss: dict[str, list[float]] = field(default_factory=dict)
    coefs: list[np.ndarray] = field(default_factory=list)  # per step: (K,) mean over modules, or (1,) mean gain
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, {score, confidence, cw})
    result: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @property
    def steps_done(self) -> int:
        return self.steps[-1] if self.steps else 0

    def update(self, store: RunStore) -> bool:
        """Read what is new; True when anything changed (events or status)."""
        rec = store.get(self.run_id)
        new = store.events_since(self.run_id, self.seq)
        for seq, kind, step, payload in new:
            self.seq = seq
            self._add(kind, step, payload)
        changed = bool(new) or rec.status != self.status or not self.name
        self.name, self.label, self.message = rec.name, rec.label, rec.message
        self.total_steps = int((rec.config.get("params") or {}).get("steps") or 0) if rec.kind == "learned" else 0
        if rec.status in FINAL and not self.done:
            self.result = rec.result
        self.status = rec.status
        return changed

    def progress(self) -> tuple[float, str]:
        """The progress bar: (fraction, text), by steps once they come, else by the current stage."""
        if self.steps:
            late = f", {self.stage}" if self.stage_key == "evaluating" and not self.done else ""
            return (min(self.steps_done / max(self.total_steps, 1), 1.0),
                    f"{self.label}: step {self.steps_done}/{self.total_steps} ({self.status}){late}")
        return self.stage_progress, f"{self.label}: {self.stage or 'starting a worker process'} ({self.status})"

    def delta(self, steps_seen: int = 0, evals_seen: int = 0) -> dict:
        """What a chart that drew ``steps_seen`` steps and ``evals_seen`` evaluations lacks, as JSON-ready
        lists (NaN as None): new steps with total, per-task loss and coefficients; new evaluations as
        [step, score, mean confidence, confidently-wrong share]; status and progress."""
        fraction, text = self.progress()
        new = slice(max(steps_seen, 0), None)
        return {
            "id": self.run_id, "status": self.status, "done": self.done, "message": self.message,
            "progress": fraction, "text": text, "steps": self.steps[new], "loss": _json(self.loss[new]),
            "task_loss": {task: _json(ys[new]) for task, ys in self.task_loss.items()},
            "coefs": [_json(c.tolist()) for c in self.coefs[new]],
            "evals": [[step] + _json([v[k] for k in ("score", "confidence", "confidently_wrong")])
                      for step, v in self.evals[max(evals_seen, 0):]],
        }

    def _add(self, kind: str, step: int, payload: dict) -> None:
        if kind == "stage":
            self.stage_key = payload.get("stage", "")
            self.stage = payload.get("text", self.stage_key)
            self.stage_progress = payload["done"] / payload["rows"] if payload.get("rows") else 0.0
        elif kind == "step":
            self.steps.append(step)
            self.loss.append(float(payload["loss"]))
            for task, value in payload.get("task_loss", {}).items():
                self.task_loss.setdefault(task, []).append(float(value) if value is not None else float("nan"))
            c = np.asarray(payload["coefs"], dtype=float)
            self.coefs.append(c.reshape(-1, c.shape[-1]).mean(0) if c.ndim else c.reshape(1))
        elif kind == "eval":
            self.evals.append((step, {key: _mean(payload.get(key) or {})
                                      for key in ("score", "confidence", "confidently_wrong")}))


def _mean(values: dict) -> float:
    xs = [float(v) for v in values.values() if v is not None]
    return float(np.mean(xs)) if xs else float("nan")


def _json(xs: list) -> list:
    """Floats as JSON allows them: NaN and infinities as None (a chart draws a gap)."""
    return [float(x) if math.isfinite(x) else None for x in xs]


def thin_index(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices (int64, increasing) of at most ``max_points`` of ``n`` points, evenly spaced, first and last kept;
    all ``n`` when they fit."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def thin(xs, ys, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """A series (xs, ys float) at the points ``thin_index`` keeps."""
    x, y = np.asarray(xs), np.asarray(ys, dtype=float)
    idx = thin_index(len(x), max_points)
    return x[idx], y[idx]
