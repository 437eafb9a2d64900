"""Confidence diagnostics: reliability diagram, ECE, confidently-wrong share, agreement with
the expert. Inputs are per-example tensors; everything returned is float64 or Python floats."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins [0, 1/n), ..., [(n-1)/n, 1]; empty bins hold NaN means."""

    edges: torch.Tensor  # (n_bins + 1,) float64
    count: torch.Tensor  # (n_bins,) int64
    confidence: torch.Tensor  # (n_bins,) float64 mean confidence per bin
    accuracy: torch.Tensor  # (n_bins,) float64 accuracy per bin


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> ReliabilityBins:
    """Bin (n,) confidences in [0, 1] with their (n,) correctness (bool or 0/1).

    Bin b = floor(conf * n_bins + 1e-6), so bins are left-closed and 1.0 falls in the last bin;
    the 1e-6 puts float32 round-offs of an edge (float32 0.9 = 0.89999998) in the upper bin.
    """
    conf = confidence.double().reshape(-1).clamp(0.0, 1.0)
    ok = correct.double().reshape(-1)
    idx = torch.floor(conf * n_bins + 1e-6).long().clamp(0, n_bins - 1)  # (n,)
    count = torch.bincount(idx, minlength=n_bins)
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    sum_ok = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, ok)
    denom = count.double()
    nan = torch.full((n_bins,), math.nan, dtype=torch.float64)
    return ReliabilityBins(
        edges=torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64),
        count=count,
        confidence=torch.where(count > 0, sum_conf / denom.clamp_min(1.0), nan),
        accuracy=torch.where(count > 0, sum_ok / denom.clamp_min(1.0), nan),
    )


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over non-empty bins; NaN for no examples."""
    bins = reliability_bins(confidence, correct, n_bins)
    N = int(bins.count.sum())
    if N == 0:
        return math.nan
    used = bins.count > 0
    gap = (bins.accuracy[used] - bins.confidence[used]).abs()
    return float((bins.count[used].double() / N * gap).sum())


def confidently_wrong_share(confidence: torch.Tensor, correct: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of *all* n examples that are wrong with confidence >= threshold; NaN if n = 0.

    The comparison is made at float32, the precision label probabilities are computed in, whatever dtype
    ``confidence`` has: a float32 0.9 (0.89999998) is confident at threshold 0.9, as the learner's periodic
    evaluation and ``reliability_bins`` (top bin) count it. The share itself is float64."""
    conf, ok = confidence.reshape(-1).float(), correct.reshape(-1).bool()
    if conf.numel() == 0:
        return math.nan
    return float(((conf >= threshold) & ~ok).double().mean())


def agreement(pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    """Share of examples where two (n,) label predictions agree; NaN if n = 0."""
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"prediction shapes differ: {tuple(pred_a.shape)} vs {tuple(pred_b.shape)}")
    return float((pred_a == pred_b).double().mean()) if pred_a.numel() else math.nan


def confidence_summary(
    probs: torch.Tensor,
    labels: torch.Tensor | None,
    expert_probs: torch.Tensor | None = None,
    threshold: float = 0.9,
    n_bins: int = 10,
    correct: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """Diagnostics of one model on one task from probs (n, C) and integer labels (n,).

    Keys: mean_confidence, accuracy, confidently_wrong (share of all examples), ece,
    agreement (with the argmax of ``expert_probs`` (n, C); None when not given). Confidence is the top
    probability, averaged in float64. ``correct`` (n,) bool, when given, replaces ``argmax == labels`` (the
    learner counts a regression row as never wrong); ``labels`` is then not read.
    """
    conf, pred = probs.max(dim=-1)
    if correct is None:
        correct = pred == labels.long().reshape(-1)
    n = conf.numel()
    return {
        "mean_confidence": float(conf.double().mean()) if n else math.nan,
        "accuracy": float(correct.double().mean()) if n else math.nan,
        "confidently_wrong": confidently_wrong_share(conf, correct, threshold),
        "ece": expected_calibration_error(conf, correct, n_bins),
        "agreement": None if expert_probs is None else agreement(pred, expert_probs.argmax(dim=-1)),
    }
