"""Pico-style calibration of shared output (B-side) directions before a merge. Space: core
(dense when the base method is TIES).

Only Pico's abstract is available (arXiv 2026, "Crowded in B-Space"): it downscales output
directions that many tasks share before merging, then rescales the merged update. The exact
rule implemented here (our specification, not the paper's):

1. Output subspace of task k: the left singular vectors P_k (R', n_k) of its core M_k with
   nonzero singular value (== the column space of s_k B_k A_k, expressed in U).
2. Crowding operator C = sum_k P_k P_k^T (R', R'), eigen-decomposed through the SVD of
   [P_1 ... P_K] = E diag(sqrt(c)) W^T. c_j in [0, K] counts how many tasks' output subspaces
   contain direction e_j (exactly the count when subspaces share e_j; fractional for partial
   overlaps).
3. Calibration D = I + E diag(max(c_j, 1)^(-strength) - 1) E^T: a direction shared by c tasks is
   divided by c^strength (strength 1: a direction that every task adds is averaged instead of
   summed); task-specific directions (c <= 1) are untouched. Each calibrated core is D M_k, i.e.
   B_k -> (U D U^T) B_k on the output side. Weights do not change D.
4. Merge the calibrated tasks with the base method (ta, ties, tsv_m, iso_c), then rescale the
   merged update so its Frobenius norm equals that of the base method's uncalibrated merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergecore.adapters import LoraFactors
from mergecore.core_space import core_space
from mergecore.errors import MergecoreError
from mergecore.fields import param
from mergecore.merges.base import (
    MergeMethod,
    ModuleMerge,
    check_choice,
    check_density,
    check_finite,
    dense_deltas,
    numerical_rank,
    present,
)
from mergecore.merges.core_methods import factored, iso_core, ta_core, tsv_core, tsv_keep
from mergecore.merges.ties_dare import SIGN_METHODS, ties_tensors

BASES = ("ta", "ties", "tsv_m", "iso_c")
DEFAULT_LAM = {"ta": 0.3, "ties": 1.0, "tsv_m": 1.0, "iso_c": 1.0}


def shared_directions(cores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E (R', m) orthonormal output directions and c (m,) how many tasks share each."""
    Ps = []
    for M in cores:  # (R', R'')
        P, S, _ = torch.linalg.svd(M, full_matrices=False)
        Ps.append(P[:, :numerical_rank(S)])
    stacked = torch.cat(Ps, dim=1)  # (R', sum n_k)
    if stacked.shape[1] == 0:  # every task is zero here
        return stacked, stacked.new_zeros(0)
    E, sv, _ = torch.linalg.svd(stacked, full_matrices=False)
    return E, sv**2


def pico_calibrate(cores: torch.Tensor, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated cores D M_k (K, R', R'') and the sharing counts c of the output directions."""
    E, c = shared_directions(cores)
    f = torch.clamp(c, min=1.0) ** (-strength) - 1.0  # 0 for task-specific directions
    D = torch.eye(cores.shape[1], dtype=cores.dtype, device=cores.device) + (E * f) @ E.T  # (R', R')
    return D @ cores, c


def _rescale(merged: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, float]:
    """merged scaled to the Frobenius norm of reference (unchanged when merged is zero)."""
    n = float(torch.linalg.norm(merged))
    ratio = float(torch.linalg.norm(reference)) / n if n > 0 else 1.0
    return merged * ratio, ratio


@dataclass(frozen=True)
class PicoParams:
    base_method: str = param("ta", "Merge after calibration", "merge run on the calibrated tasks: ta, ties, tsv_m or "
                             "iso_c", choices=BASES)
    strength: float = param(1.0, "Calibration strength", "a direction shared by c tasks is scaled by c^-strength "
                            "before merging (0 = no calibration)")
    lam: float | None = param(None, "Task weight (lambda)", "weight of every task when no explicit weights are given; "
                              "method default = the merge's own (ta 0.3, others 1.0)", none_label="method default")
    density: float = param(0.2, "Density (ties)", "ties only: fraction of entries kept per task", advanced=True)
    majority_sign_method: str = param("total", "Sign election (ties)", "ties only: 'total' (sum of values) or "
                                      "'frequency' (count of signs)", advanced=True, choices=SIGN_METHODS)
    fraction: float | None = param(None, "Rank fraction kept per task (tsv_m)", "tsv_m only: fraction of each task's "
                                   "rank kept; 1/K = the TSV-M paper's choice", advanced=True, none_label="1/K")
    alpha: float = param(1.0, "Scale of the merged update (alpha)", "tsv_m / iso_c only: scale of the merged update",
                         advanced=True)

    def __post_init__(self):
        check_choice("pico", "base_method", self.base_method, BASES)
        check_density("pico", self.density)
        check_choice("pico", "majority_sign_method", self.majority_sign_method, SIGN_METHODS)
        if not self.strength >= 0:  # NaN too
            raise MergecoreError(f"pico: strength must be >= 0, got {self.strength}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise MergecoreError(f"pico: fraction must be in (0, 1] or none, got {self.fraction}")
        check_finite("pico", self, "strength", "lam", "alpha")


def _core_merge(cores: torch.Tensor, weights: list[float], params: PicoParams, keep: list[int]) -> torch.Tensor:
    if params.base_method == "ta":
        return ta_core(cores, weights)
    if params.base_method == "tsv_m":
        return tsv_core(cores, weights, keep, params.alpha)
    return iso_core(cores, weights, params.alpha)


def pico(factors: list[LoraFactors | None], weights: list[float], params: PicoParams) -> ModuleMerge:
    present(factors)  # refuses a module no adapter targets
    cs = core_space(factors)
    cal, c = pico_calibrate(cs.cores, params.strength)
    info = {"sharing": c.tolist()}
    if params.base_method == "ties":  # element-wise: dense deltas of raw and calibrated tasks
        raw = ties_tensors(dense_deltas(factors), weights, params.density, params.majority_sign_method)
        cal_d = (cs.U @ cal @ cs.V).float()  # (K, out, in)
        merged = ties_tensors(cal_d, weights, params.density, params.majority_sign_method)
        merged, ratio = _rescale(merged, raw)
        return ModuleMerge(space="dense", dense=merged, info={**info, "rescale": ratio})
    keep = tsv_keep([0 if f is None else f.rank for f in factors], params.fraction)
    merged, ratio = _rescale(_core_merge(cal, weights, params, keep), _core_merge(cs.cores, weights, params, keep))
    return factored(cs, merged, {**info, "rescale": ratio})


def _weights(num: int, params: PicoParams) -> list[float]:
    return [params.lam if params.lam is not None else DEFAULT_LAM[params.base_method]] * num


METHODS = [
    MergeMethod("pico", PicoParams, "core", pico,
                "Pico-style: downscale output directions shared by many tasks, merge (ta/ties/tsv_m/iso_c), "
                "restore the uncalibrated merge's norm (core; dense with base_method=ties)", _weights),
]
