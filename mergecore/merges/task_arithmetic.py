"""Task arithmetic, uniform average and exact concatenation. Space: LoRA factors.

sum_k w_k s_k B_k A_k is exactly one LoRA of rank R = sum r_k:
    B = [w_1 s_1 B_1 ... w_K s_K B_K]   (out, R)
    A = [A_1; ...; A_K]                  (R, in)
No SVD, no dense matrix, no loss. (PEFT's ``add_weighted_adapter`` "linear" combines A's and B's
separately and is not this sum; only its "cat" is.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergecore.adapters import LoraFactors
from mergecore.fields import param
from mergecore.merges.base import MergeMethod, ModuleMerge, check_finite, lam_weights, present


@dataclass(frozen=True)
class TaskArithmeticParams:
    lam: float = param(0.3, "Task-vector weight (lambda)", "coefficient of every task vector when no explicit weights "
                       "are given (Ilharco et al.; 0.3 is the usual default)")

    def __post_init__(self):
        check_finite("task_arithmetic", self, "lam")


@dataclass(frozen=True)
class NoParams:
    """Methods without parameters (uniform: weights 1/K; concat: weights 1)."""


def weighted_concat(factors: list[LoraFactors | None], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """B (out, R) = [w_k s_k B_k], A (R, in) = [A_k] over present adapters (float32 in, float32 out)."""
    idx = present(factors)
    B = torch.cat([weights[k] * factors[k].scale * factors[k].B for k in idx], dim=1)  # (out, R)
    A = torch.cat([factors[k].A for k in idx], dim=0)  # (R, in)
    return B, A


def task_arithmetic(factors: list[LoraFactors | None], weights: list[float], params=None) -> ModuleMerge:
    """sum_k w_k s_k B_k A_k as one exact LoRA of rank sum r_k."""
    B, A = weighted_concat(factors, weights)
    return ModuleMerge(space="lora-factors", B=B, A=A, info={"rank": A.shape[0]})


METHODS = [
    MergeMethod("task_arithmetic", TaskArithmeticParams, "lora-factors", task_arithmetic,
                "sum_k w_k dW_k with w_k = lam (0.3) unless weights are given; exact, rank sum r_k",
                lam_weights),
    MergeMethod("uniform", NoParams, "lora-factors", task_arithmetic,
                "average of the task vectors (w_k = 1/K); exact, rank sum r_k",
                lambda num, params: [1.0 / num] * num),
    MergeMethod("concat", NoParams, "lora-factors", task_arithmetic,
                "plain sum (w_k = 1): the exact concatenation of all adapters, rank sum r_k",
                lambda num, params: [1.0] * num),
]
