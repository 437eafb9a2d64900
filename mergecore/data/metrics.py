"""Task metrics as GLUE defines them, from predictions and labels (pure numpy)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from mergecore.errors import MergecoreError


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold))) if len(gold) else 0.0


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation for binary labels; 0 when undefined (a constant prediction)."""
    p, g = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp, tn = float(np.sum(p & g)), float(np.sum(~p & ~g))
    fp, fn = float(np.sum(p & ~g)), float(np.sum(~p & g))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den > 0 else 0.0


def pearson_spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    """Mean of Pearson and Spearman correlation (GLUE's STS-B score); 0 when undefined."""
    x, y = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float((stats.pearsonr(x, y)[0] + stats.spearmanr(x, y)[0]) / 2)


METRICS = {"accuracy": accuracy, "matthews": matthews, "pearson_spearman": pearson_spearman}


def score(metric: str, pred, gold) -> float:
    """Score in percent (x100), like the papers' tables."""
    if metric not in METRICS:
        raise MergecoreError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return 100.0 * METRICS[metric](np.asarray(pred), np.asarray(gold))
