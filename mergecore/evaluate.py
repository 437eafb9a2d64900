"""Per-task metrics of any merge on the labeled evaluation split, and ANP (DivMerge Eq. 5)."""

from __future__ import annotations

import numpy as np
import torch

from .metrics import score
from .tasks import Task


def predictions(task: Task, probs: torch.Tensor) -> np.ndarray:
    """Class predictions, or the expected value over binned labels for regression tasks."""
    if task.metric == "pearson_spearman" and task.label_values:
        return (probs.double() @ torch.tensor(task.label_values, dtype=torch.float64)).numpy()
    return probs.argmax(-1).numpy()


def task_scores(tasks, probs: list[torch.Tensor]) -> dict[str, float]:
    """Metric (percent) per task from evaluation-split probabilities."""
    return {t.name: score(t.metric, predictions(t, p), np.asarray(t.evaluation.labels)) for t, p in zip(tasks, probs)}


def average(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else 0.0


def anp(scores: dict[str, float], expert_scores: dict[str, float]) -> float:
    """Average Normalized Performance: mean over tasks of merged / expert score (DivMerge Eq. 5)."""
    ratios = [scores[t] / expert_scores[t] for t in scores if abs(expert_scores.get(t, 0.0)) > 1e-12]
    return float(np.mean(ratios)) if ratios else 0.0


def evaluate(bench, source) -> dict[str, float]:
    """Scores of one coefficient source on every task's evaluation split."""
    return task_scores(bench.tasks, bench.predict(source, "evaluation"))


def baselines(bench) -> dict[str, dict[str, float]]:
    """Pre-trained (no adapters, each task's head), each expert on its own task, uniform 1/K."""
    return {
        "pre-trained": evaluate(bench, bench.pretrained()),
        "experts": evaluate(bench, bench.routing()),
        "uniform": evaluate(bench, bench.uniform()),
    }
