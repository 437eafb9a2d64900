"""The learner's objectives: a per-example loss between each task's reference (its expert's distribution,
its labels, or none) and the merged model, built on the divergence kernels, plus the L2 pull."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mergecore.divergences import cross_entropy, entropy, js_div, kl_div, reverse_kl
from mergecore.errors import MergecoreError


def l2_pull(gamma: torch.Tensor, gamma0: torch.Tensor, weight: float) -> torch.Tensor:
    """lambda * ||Gamma - Gamma_0||^2 (SourceJS Eq. 7; Gamma_0 = 1/K there)."""
    return weight * (gamma - gamma0).pow(2).sum()


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reference: str  # "expert" (needs Stage 1), "labels" (needs labeled subset), "none"
    summary: str


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("js", js_div, "expert", "Jensen-Shannon to each task's expert (SourceJS, DivMerge)"),
    Objective("kl", kl_div, "expert", "KL(expert || merged) (DivMerge)"),
    Objective("rkl", reverse_kl, "expert", "KL(merged || expert)"),
    Objective("entropy", entropy, "none", "entropy of the merged model's predictions (AdaMerging)"),
    Objective("ce", cross_entropy, "labels", "supervised cross-entropy on a small labeled subset"),
)}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise MergecoreError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
