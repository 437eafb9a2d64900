"""OSRM applied to existing adapters (Zhang & Zhou 2025, Sec. 5.4 with Eq. 3). Space: LoRA factors
(plus the in x in covariance of input features; never an out x in matrix).

For adapter k on a module, with H (n, in) the stacked input features of the OTHER tasks at that
module (one row per example: masked mean over real tokens, supplied by the caller):
  S = H^T H / (n - 1)                      (uncentered, as in the paper)
  A'_k = the r_k eigenvectors of S with the smallest eigenvalues, as rows (r_k, in)   (Eq. 3)
  B'_k = argmin_B ||(B A'_k - s_k B_k A_k) H_k^T||_F on task k's own features H_k when given
         (and ``fit_on_features``), else argmin_B ||B A'_k - s_k B_k A_k||_F = s_k B_k A_k A'_k^T.
Then the recovered adapters are merged by task arithmetic: B = [w_k B'_k], A = [A'_k] (exact).

Degenerate eigenvalues: when fewer than in examples are given, S has a null space of dimension
> r_k and Eq. 3 does not pick one subspace (LAPACK would return an arbitrary one). All choices
inside the tied eigenvalue cluster have the same objective tr(A S A^T); we take, inside that
cluster, the directions that best keep the adapter's delta (top right singular vectors of
s_k B_k A_k restricted to the cluster). Without ties this is exactly Eq. 3.

``info["rel_err"][k]`` = ||B'_k A'_k - s_k B_k A_k||_F / ||s_k B_k A_k||_F (computed factored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergecore.adapters import LoraFactors
from mergecore.errors import MergecoreError
from mergecore.fields import param
from mergecore.merges.base import MergeMethod, ModuleMerge, check_finite, lam_weights, module_shape, present

EIG_RTOL = 1e-9  # eigenvalues within EIG_RTOL * max of the r-th smallest are tied


def covariance(H: torch.Tensor) -> torch.Tensor:
    """Uncentered sample covariance H^T H / (n - 1): (n, in) -> (in, in) float64."""
    H = H.double()
    return H.T @ H / max(H.shape[0] - 1, 1)


def osrm_basis(S: torch.Tensor, sB: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """A' (r, in): orthonormal rows spanning S's r smallest eigen-directions (Eq. 3), ties broken
    toward the adapter's delta sB (out, r) @ A (r, in)."""
    r = A.shape[0]
    lam, E = torch.linalg.eigh(S)  # ascending, E (in, in)
    tol = EIG_RTOL * max(float(lam[-1]), 1e-300)
    below = int((lam < lam[r - 1] - tol).sum())
    cluster = E[:, (lam >= lam[r - 1] - tol) & (lam <= lam[r - 1] + tol)]  # (in, c), c >= r - below
    if cluster.shape[1] == r - below:
        return E[:, :r].T
    G = sB @ (A @ cluster)  # (out, c): the delta restricted to the tied cluster
    _, _, Vh = torch.linalg.svd(G, full_matrices=True)
    picked = Vh[: r - below] @ cluster.T  # (r - below, in)
    return torch.cat([E[:, :below].T, picked], dim=0)


def refit_B(sB: torch.Tensor, A: torch.Tensor, A_new: torch.Tensor, H_own: torch.Tensor | None) -> torch.Tensor:
    """B' (out, r) minimising ||B' A_new - sB A|| in Frobenius norm or on the rows of H_own (n, in)."""
    if H_own is None:
        return sB @ (A @ A_new.T)
    X = H_own @ A_new.T  # (n, r)
    Y = (H_own @ A.T) @ sB.T  # (n, out)
    return (torch.linalg.pinv(X) @ Y).T


def rel_err(B1: torch.Tensor, A1: torch.Tensor, B2: torch.Tensor, A2: torch.Tensor) -> float:
    """||B1 A1 - B2 A2||_F / ||B2 A2||_F without forming either product (0 when B2 A2 = 0)."""
    X, Y = torch.cat([B1, -B2], dim=1), torch.cat([A1, A2], dim=0)  # (out, 2r), (2r, in)
    num = float(((X.T @ X) * (Y @ Y.T)).sum().clamp(min=0))
    den = float(((B2.T @ B2) * (A2 @ A2.T)).sum().clamp(min=0))
    return (num / den) ** 0.5 if den > 0 else 0.0


@dataclass(frozen=True)
class OsrmParams:
    lam: float = param(0.3, "Task weight (lambda)", "task-arithmetic weight of every recovered adapter when no "
                       "explicit weights are given (same default as task_arithmetic)")
    fit_on_features: bool = param(True, "Fit on the task's features", "fit B' on the task's own features when they "
                                  "are given (else Frobenius fit)", advanced=True)

    def __post_init__(self):
        check_finite("osrm", self, "lam")


def _features(features: dict[int, torch.Tensor], num: int, inn: int, ref: torch.Tensor) -> dict[int, torch.Tensor]:
    out = {}
    for j, H in features.items():
        if not (isinstance(j, int) and 0 <= j < num):
            raise MergecoreError(f"osrm: feature key {j!r} is not an adapter index 0..{num - 1}")
        if H.ndim != 2 or H.shape[1] != inn or H.shape[0] == 0:
            raise MergecoreError(f"osrm: features of task {j} must be (n >= 1, {inn}), got {tuple(H.shape)}")
        out[j] = H.to(device=ref.device, dtype=torch.float64)
    return out


def osrm(factors: list[LoraFactors | None], weights: list[float], params: OsrmParams,
         features: dict[int, torch.Tensor] | None = None) -> ModuleMerge:
    if not features:
        raise MergecoreError("osrm needs input features of the tasks at every module; pass features={task: (n, in)}")
    idx = present(factors)
    feats = _features(features, len(factors), module_shape(factors)[1], factors[idx[0]].A)
    Bs, As, errs, ferrs = [], [], {}, {}
    for k in idx:
        others = [feats[j] for j in sorted(feats) if j != k]
        if not others:
            raise MergecoreError(f"osrm: no features of any task other than {k}; give features of at least two tasks")
        f = factors[k]
        sB, A = f.scale * f.B.double(), f.A.double()
        A_new = osrm_basis(covariance(torch.cat(others)), sB, A)
        own = feats.get(k) if params.fit_on_features else None
        B_new = refit_B(sB, A, A_new, own)
        errs[k] = rel_err(B_new, A_new, sB, A)
        if own is not None:
            ferrs[k] = rel_err(B_new, A_new @ own.T, sB, A @ own.T)  # error on the own features
        Bs.append(weights[k] * B_new), As.append(A_new)
    info = {"rel_err": errs, "rel_err_features": ferrs, "rank": sum(a.shape[0] for a in As)}
    return ModuleMerge(space="lora-factors", B=torch.cat(Bs, dim=1), A=torch.cat(As, dim=0), info=info)


METHODS = [
    MergeMethod("osrm", OsrmParams, "lora-factors", osrm,
                "OSRM on existing adapters: re-base each A on the other tasks' low-variance input directions, "
                "refit B, then task arithmetic (needs features)", lam_weights, needs_features=True),
]
