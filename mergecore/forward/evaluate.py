"""Per-task metrics of any merge on the labeled evaluation split, and ANP (DivMerge Eq. 5)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mergecore.data.metrics import score
from mergecore.data.tasks import Task
from mergecore.forward.generative import generate_texts, rouge1
from mergecore.forward.workbench import Workbench
from mergecore.numbers import as_float


def predictions(task: Task, probs: torch.Tensor) -> np.ndarray:
    """Class predictions, or the expected value over binned labels for regression tasks."""
    if task.metric == "pearson_spearman" and task.label_values:
        return (probs.double() @ torch.tensor(task.label_values, dtype=torch.float64)).numpy()
    return probs.argmax(-1).numpy()


def task_scores(tasks, probs: list[torch.Tensor]) -> dict[str, float]:
    """Metric (percent) per task from evaluation-split probabilities."""
    return {t.name: score(t.metric, predictions(t, p), np.asarray(t.evaluation.labels)) for t, p in zip(tasks, probs)}


def average(scores: dict[str, float]) -> float:
    """Mean of the defined scores; NaN when there is none (generative tasks without references score NaN,
    a stored run's missing score is null)."""
    values = [v for v in map(as_float, scores.values()) if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def anp(scores: dict[str, float], expert_scores: dict[str, float]) -> float:
    """Average Normalized Performance: mean over tasks of merged / expert score (DivMerge Eq. 5);
    NaN when no task has a defined ratio (no expert score, or an expert score of 0)."""
    ratios = []
    for t, v in scores.items():
        s, e = as_float(v), as_float(expert_scores.get(t))
        if math.isfinite(s) and math.isfinite(e) and abs(e) > 1e-12:
            ratios.append(s / e)
    return float(np.mean(ratios)) if ratios else math.nan


def evaluate(bench: Workbench, source) -> dict[str, float]:
    """Scores of one coefficient source on every task's evaluation split (ROUGE-1 for generative tasks)."""
    probs = bench.predict(source, "evaluation")
    label = task_scores([bench.tasks[k] for k in bench.label_tasks], [probs[k] for k in bench.label_tasks])
    return {t.name: label[t.name] if t.name in label else generative_score(bench, source, k)
            for k, t in enumerate(bench.tasks)}


def generative_score(bench: Workbench, source, k: int) -> float:
    """ROUGE-1 F1 (percent) of greedy outputs against the task's references (NaN without references)."""
    task = bench.tasks[k]
    if not task.references:
        return float("nan")
    bench.model.set_source(source)
    texts = generate_texts(bench.generator, k, [task.render(f) for f in task.evaluation.inputs],
                           bench.gen_params.max_new_tokens)
    return rouge1(texts, list(task.references))


def baselines(bench: Workbench) -> dict[str, dict[str, float]]:
    """Pre-trained (no adapters, each task's head), each expert on its own task, uniform 1/K."""
    return {
        "pre-trained": evaluate(bench, bench.pretrained()),
        "experts": evaluate(bench, bench.routing()),
        "uniform": evaluate(bench, bench.uniform()),
    }
