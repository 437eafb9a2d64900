"""SVD-based merges: KnOTS, TSV-M, Iso-C. Space: core (float64, R' x R'' cores of ``core_space``).

With s_k B_k A_k == U M_k V (U (out, R'), V (R'', in) orthonormal), every SVD of a sum or
concatenation of task deltas is an SVD of the small cores, mapped back through U and V. Only the
nonzero rank is used (singular values <= RANK_RTOL * max are dropped): dense-task-vector
implementations of TSV-M / Iso-C would otherwise lift the null directions of low-rank deltas.
No method here forms an out x in matrix.

- KnOTS (Stoica et al. 2024): SVD of the column-concatenation [M_1 ... M_K] = P S [Q_1 ... Q_K];
  task k is aligned as P S Q_k (shared output basis P S, task-specific Q_k (q, R'')). Merge the
  Q_k with TA (sum_k w_k Q_k) or TIES (element-wise, on Q_k V (q, in): the input coordinates, as
  KnOTS applies TIES to the V's of dense deltas); result B = U P S, A = merged (q, in).
- TSV-M (Gargiulo et al. 2025): per task SVD M_k = P_k S_k Qh_k, keep the top ceil(fraction *
  r_k) directions (fraction default 1/K), concatenate P's and Qh's, whiten each concatenation by
  its polar factor (X = W S Z^T -> W Z^T, the closest orthonormal matrix), merged core =
  alpha * P_perp diag(w_k S_k) Q_perp^T.
- Iso-C (Marczak et al. 2025): M = sum_k w_k M_k = P S Qh; replace the nonzero singular values by
  their mean: alpha * mean(S) P Qh (isotropic spectrum on the rank of M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mergecore.adapters import LoraFactors
from mergecore.core_space import CoreSpace, core_space
from mergecore.errors import MergecoreError
from mergecore.fields import param
from mergecore.merges.base import (
    MergeMethod,
    ModuleMerge,
    check_choice,
    check_density,
    check_finite,
    lam_weights,
    numerical_rank,
    present,
)
from mergecore.merges.ties_dare import SIGN_METHODS, ties_tensors

# ----------------------------------------------------------------------------- shared helpers


def polar(X: torch.Tensor) -> torch.Tensor:
    """Closest matrix with orthonormal columns to X (n, m): W Z^T from X = W S Z^T."""
    W, _, Zh = torch.linalg.svd(X, full_matrices=False)
    return W @ Zh


def weighted(cores: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """(K, R', R'') cores scaled by one weight each."""
    return cores * torch.tensor(weights, dtype=cores.dtype, device=cores.device).view(-1, 1, 1)


def factored(cs: CoreSpace, core: torch.Tensor, info: dict | None = None) -> ModuleMerge:
    """ModuleMerge of U core V, truncated to the numerical rank of core (>= 1 so shapes stay valid)."""
    B, A, S = cs.to_lora(core)  # B (out, R''), A (R'', in), S descending
    r = max(1, numerical_rank(S))
    return ModuleMerge(space="core", B=B[:, :r], A=A[:r],
                       info={"rank": r, "singular_values": S[:r].tolist(), **(info or {})})


# ----------------------------------------------------------------------------- core-level maths


def ta_core(cores: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """sum_k w_k M_k: (K, R', R'') -> (R', R'')."""
    return weighted(cores, weights).sum(dim=0)


def iso_core(cores: torch.Tensor, weights: list[float], alpha: float = 1.0) -> torch.Tensor:
    """Iso-C: flatten the nonzero spectrum of sum_k w_k M_k to its mean, times alpha."""
    P, S, Qh = torch.linalg.svd(ta_core(cores, weights), full_matrices=False)
    r = numerical_rank(S)
    if r == 0:
        return torch.zeros_like(cores[0])
    return alpha * S[:r].mean() * (P[:, :r] @ Qh[:r])


def tsv_keep(ranks: list[int], fraction: float | None) -> list[int]:
    """Directions kept per task: ceil(fraction * r_k), fraction default 1/K."""
    frac = 1.0 / len(ranks) if fraction is None else fraction
    return [math.ceil(frac * r - 1e-9) for r in ranks]


def tsv_core(cores: torch.Tensor, weights: list[float], keep: list[int], alpha: float = 1.0) -> torch.Tensor:
    """TSV-M on cores (K, R', R''): top keep[k] singular directions of each task, whitened, merged."""
    Ps, Ss, Qs = [], [], []
    for k in range(cores.shape[0]):
        P, S, Qh = torch.linalg.svd(cores[k], full_matrices=False)
        n = min(keep[k], numerical_rank(S))
        Ps.append(P[:, :n]), Ss.append(weights[k] * S[:n]), Qs.append(Qh[:n].T)
    S_cat = torch.cat(Ss)
    if S_cat.numel() == 0:
        return torch.zeros_like(cores[0])
    P_perp, Q_perp = polar(torch.cat(Ps, dim=1)), polar(torch.cat(Qs, dim=1))  # (R', n), (R'', n)
    return alpha * (P_perp * S_cat) @ Q_perp.T


def knots_align(cores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[M_1 ... M_K] = P S [Q_1 ... Q_K] on its numerical rank q.

    Returns P (R', q), S (q,), Q (K, q, R'') with M_k = P diag(S) Q[k].
    """
    K, R1, R2 = cores.shape
    cat = cores.transpose(0, 1).reshape(R1, K * R2)  # row i = [M_1[i], ..., M_K[i]]
    P, S, Qh = torch.linalg.svd(cat, full_matrices=False)
    q = numerical_rank(S)
    return P[:, :q], S[:q], Qh[:q].reshape(q, K, R2).transpose(0, 1)


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class KnotsParams:
    merge: str = param("ties", "Merge of the aligned representations", "how the aligned task representations are "
                       "merged: 'ties' (KnOTS-TIES, the paper's best) or 'ta'", choices=("ties", "ta"))
    density: float = param(0.2, "Density (ties: share of entries kept)",
                           "ties only: fraction of each aligned representation's entries kept")
    majority_sign_method: str = param(
        "total", "Sign election (ties)", "ties only: 'total' (sum of values) or 'frequency' (count of signs) sign "
        "election", advanced=True, choices=SIGN_METHODS)
    lam: float = param(1.0, "Task weight (lambda)", "weight of every task when no explicit weights are given")

    def __post_init__(self):
        check_choice("knots", "merge", self.merge, ("ties", "ta"))
        check_density("knots", self.density)
        check_choice("knots", "majority_sign_method", self.majority_sign_method, SIGN_METHODS)
        check_finite("knots", self, "lam")


@dataclass(frozen=True)
class TsvParams:
    fraction: float | None = param(None, "Rank fraction kept per task", "fraction of each task's rank r_k kept "
                                   "(ceil); 1/K = the TSV-M paper's choice", none_label="1/K")
    alpha: float = param(1.0, "Scale of the merged update (alpha)", "global scale of the merged update (TSV-M paper: 1.0)")

    def __post_init__(self):
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise MergecoreError(f"tsv_m: fraction must be in (0, 1] or none, got {self.fraction}")
        check_finite("tsv_m", self, "alpha")


@dataclass(frozen=True)
class IsoParams:
    alpha: float = param(1.0, "Scale of the merged update (alpha)",
                         "scale of the isotropic merged update (Iso-C tunes it; default 1.0)")

    def __post_init__(self):
        check_finite("iso_c", self, "alpha")


def knots(factors: list[LoraFactors | None], weights: list[float], params: KnotsParams) -> ModuleMerge:
    present(factors)  # refuses a module no adapter targets
    cs = core_space(factors)
    P, S, Q = knots_align(cs.cores)  # (R', q), (q,), (K, q, R'')
    if S.numel() == 0:
        return factored(cs, torch.zeros_like(cs.cores[0]))
    if params.merge == "ta":
        A = ta_core(Q, weights) @ cs.V  # (q, in)
    else:
        A = ties_tensors(Q @ cs.V, weights, params.density, params.majority_sign_method)  # (q, in)
    B = cs.U @ (P * S)  # (out, q)
    return ModuleMerge(space="core", B=B, A=A, info={"rank": int(S.numel()), "singular_values": S.tolist()})


def tsv_m(factors: list[LoraFactors | None], weights: list[float], params: TsvParams) -> ModuleMerge:
    present(factors)  # refuses a module no adapter targets
    cs = core_space(factors)
    keep = tsv_keep([0 if f is None else f.rank for f in factors], params.fraction)
    return factored(cs, tsv_core(cs.cores, weights, keep, params.alpha), {"kept": keep})


def iso_c(factors: list[LoraFactors | None], weights: list[float], params: IsoParams) -> ModuleMerge:
    present(factors)  # refuses a module no adapter targets
    cs = core_space(factors)
    return factored(cs, iso_core(cs.cores, weights, params.alpha))


def _ones(num: int, params) -> list[float]:
    return [1.0] * num


METHODS = [
    MergeMethod("knots", KnotsParams, "core", knots,
                "KnOTS: align tasks by SVD of the concatenated cores, TIES (or TA) on the aligned representations",
                lam_weights),
    MergeMethod("tsv_m", TsvParams, "core", tsv_m,
                "TSV-M: top 1/K singular directions per task, whitened (orthogonalised), summed", _ones),
    MergeMethod("iso_c", IsoParams, "core", iso_c,
                "Iso-C: sum of the tasks with a flat (mean) spectrum on its nonzero rank", _ones),
]
