"""TIES, DARE (linear), DARE-TIES and magnitude pruning. Space: dense, element-wise.

Each task's dense delta s_k B_k A_k (out, in) is formed in float32 and merged entry by entry with
the same maths as ``peft.utils.merge_utils`` (PEFT 0.21), reimplemented here so that DARE's masks
come from a seeded ``torch.Generator`` instead of the global RNG. For every mask drawn, PEFT calls
``torch.bernoulli(torch.full_like(t, density))`` once per task in order; we do the same with
``generator=``, so a generator seeded with s gives PEFT's masks after ``torch.manual_seed(s)``.

Weights follow PEFT: sign election uses the *unweighted* pruned deltas; the weights multiply the
pruned deltas before the disjoint mean (TIES) or sum (DARE, magnitude). TIES' paper lambda is
thus the default weight of every task (``lam``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergecore.adapters import LoraFactors
from mergecore.fields import check_number, param
from mergecore.merges.base import (
    MergeMethod,
    ModuleMerge,
    check_choice,
    check_density,
    check_finite,
    dense_deltas,
    lam_weights,
)

SIGN_METHODS = ("total", "frequency")


# ----------------------------------------------------------------------------- tensor maths (PEFT)


def magnitude_prune_tensor(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density * numel) entries of largest |t|, zero the rest (any shape)."""
    if density >= 1:
        return t
    mask = torch.zeros_like(t).reshape(-1)
    k = int(density * t.numel())
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True)[1]] = 1
    return t * mask.reshape(t.shape)


def random_prune_tensor(t: torch.Tensor, density: float, rescale: bool,
                        generator: torch.Generator | None) -> torch.Tensor:
    """Keep each entry with probability ``density`` (Bernoulli mask), optionally divide by density."""
    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density), generator=generator)
    out = t * mask
    return out / density if rescale else out


def majority_sign_mask(stacked: torch.Tensor, method: str = "total") -> torch.Tensor:
    """stacked (K, ...): True where an entry's sign equals the elected sign (ties -> +)."""
    sign = stacked.sign()
    mass = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(mass >= 0, 1, -1)


def disjoint_merge(stacked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tasks that agree with the elected sign (K, ...) -> (...)."""
    return (stacked * mask).sum(dim=0) / torch.clamp(mask.sum(dim=0), min=1.0)


def _w(stacked: torch.Tensor, weights: list[float]) -> torch.Tensor:
    return torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * (stacked.dim() - 1))


def ties_tensors(stacked: torch.Tensor, weights: list[float], density: float,
                 sign_method: str = "total") -> torch.Tensor:
    """TIES (trim top-``density``, elect sign, disjoint mean) on stacked (K, ...) task tensors."""
    pruned = torch.stack([magnitude_prune_tensor(t, density) for t in stacked])
    mask = majority_sign_mask(pruned, sign_method)
    return disjoint_merge(pruned * _w(pruned, weights), mask)


def dare_tensors(stacked: torch.Tensor, weights: list[float], density: float, rescale: bool,
                 generator: torch.Generator | None, ties: bool, sign_method: str = "total") -> torch.Tensor:
    """DARE (random drop + rescale) then weighted sum, or then TIES' sign election + disjoint mean."""
    pruned = torch.stack([random_prune_tensor(t, density, rescale, generator) for t in stacked])
    if not ties:
        return (pruned * _w(pruned, weights)).sum(dim=0)
    return disjoint_merge(pruned * _w(pruned, weights), majority_sign_mask(pruned, sign_method))


def magnitude_tensors(stacked: torch.Tensor, weights: list[float], density: float) -> torch.Tensor:
    """Magnitude-prune each task tensor, then weighted sum."""
    pruned = torch.stack([magnitude_prune_tensor(t, density) for t in stacked])
    return (pruned * _w(pruned, weights)).sum(dim=0)


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class TiesParams:
    density: float = param(0.2, "Density (share of entries kept)",
                           "fraction of each task's entries kept by magnitude (TIES paper: top-20%)")
    majority_sign_method: str = param(
        "total", "Sign election", "sign election: 'total' (sum of values, TIES paper) or 'frequency' (count of signs)",
        advanced=True, choices=SIGN_METHODS)
    lam: float = param(1.0, "Task weight (lambda)",
                       "weight of every task when no explicit weights are given (TIES paper lambda = 1)")

    def __post_init__(self):
        check_density("ties", self.density)
        check_finite("ties", self, "lam")
        check_choice("ties", "majority_sign_method", self.majority_sign_method, SIGN_METHODS)


@dataclass(frozen=True)
class DareParams:
    density: float = param(0.1, "Keep probability (1 - drop rate p)",
                           "keep probability of each entry (PEFT's density; DARE paper drop rate p = 0.9 -> 0.1)")
    rescale: bool = param(True, "Rescale kept entries by 1/density",
                          "divide kept entries by density (DARE; PEFT always rescales)", advanced=True)
    lam: float = param(0.3, "Task weight (lambda)",
                       "weight of every task when no explicit weights are given (0.3, as task arithmetic)")
    seed: int = param(0, "Seed of the drop masks",
                      "seed of the torch.Generator that draws the masks (mixed with the module name)", advanced=True)

    def __post_init__(self):
        check_density("dare", self.density)
        check_finite("dare", self, "lam")
        check_number("dare: seed", self.seed, "--param seed", whole=True)


@dataclass(frozen=True)
class DareTiesParams(DareParams):
    lam: float = param(1.0, "Task weight (lambda)",
                       "weight of every task when no explicit weights are given (TIES lambda = 1)")
    majority_sign_method: str = param(
        "total", "Sign election",
        "sign election after the drop: 'total' (sum of values, TIES) or 'frequency' (count of signs)",
        advanced=True, choices=SIGN_METHODS)

    def __post_init__(self):
        check_density("dare_ties", self.density)
        check_finite("dare_ties", self, "lam")
        check_number("dare_ties: seed", self.seed, "--param seed", whole=True)
        check_choice("dare_ties", "majority_sign_method", self.majority_sign_method, SIGN_METHODS)


@dataclass(frozen=True)
class MagnitudeParams:
    density: float = param(0.2, "Density (share of entries kept)", "fraction of each task's entries kept by magnitude")
    lam: float = param(0.3, "Task weight (lambda)",
                       "weight of every task when no explicit weights are given (as task arithmetic)")

    def __post_init__(self):
        check_density("magnitude_prune", self.density)
        check_finite("magnitude_prune", self, "lam")


def _dense(merged: torch.Tensor) -> ModuleMerge:
    return ModuleMerge(space="dense", dense=merged)


def ties(factors: list[LoraFactors | None], weights: list[float], params: TiesParams) -> ModuleMerge:
    d = dense_deltas(factors)  # (K, out, in) float32
    return _dense(ties_tensors(d, weights, params.density, params.majority_sign_method))


def _generator(params: DareParams, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(params.seed))


def dare_linear(factors: list[LoraFactors | None], weights: list[float], params: DareParams) -> ModuleMerge:
    d = dense_deltas(factors)
    g = _generator(params, d.device)
    return _dense(dare_tensors(d, weights, params.density, params.rescale, g, ties=False))


def dare_ties(factors: list[LoraFactors | None], weights: list[float], params: DareTiesParams) -> ModuleMerge:
    d = dense_deltas(factors)
    g = _generator(params, d.device)
    return _dense(dare_tensors(d, weights, params.density, params.rescale, g, True, params.majority_sign_method))


def magnitude_prune(factors: list[LoraFactors | None], weights: list[float], params: MagnitudeParams) -> ModuleMerge:
    return _dense(magnitude_tensors(dense_deltas(factors), weights, params.density))


METHODS = [
    MergeMethod("ties", TiesParams, "dense", ties,
                "TIES: keep top-20% entries per task, elect signs, mean of agreeing entries (dense)", lam_weights),
    MergeMethod("dare_linear", DareParams, "dense", dare_linear,
                "DARE: drop 90% of entries at random, rescale by 1/density, weighted sum (dense, seeded)", lam_weights),
    MergeMethod("dare_ties", DareTiesParams, "dense", dare_ties,
                "DARE masks + TIES sign election and disjoint mean (dense, seeded)", lam_weights),
    MergeMethod("magnitude_prune", MagnitudeParams, "dense", magnitude_prune,
                "keep top-20% entries per task by magnitude, weighted sum (dense)", lam_weights),
]
