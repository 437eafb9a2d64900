"""Subspace lenses on LoRA factors: principal angles, B/A overlap, task-vector cosine,
Pico's shared output directions, and OSRM's data-parameter interference.

All in float64 on the factors; nothing forms a dense out x in delta. Convention for the K x K
matrices: an absent adapter (None) gives a NaN row and column; a present all-zero adapter spans
the empty subspace and gets overlap 0 and cosine 0 (no NaN from 0 / 0).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from mergecore.adapters import LoraFactors


def orthonormal_basis(X: torch.Tensor) -> torch.Tensor:
    """Rank-revealing orthonormal basis (n, k) of the column space of X (n, m), float64.

    Thin QR then an SVD of the small R factor; directions with singular value below
    ``s_max * max(n, m) * eps`` are dropped (as ``scipy.linalg.orth``). k = 0 for X == 0.
    """
    Q, R = torch.linalg.qr(X.double())  # Q (n, p), R (p, m), p = min(n, m)
    P, S, _ = torch.linalg.svd(R, full_matrices=False)
    tol = (S.max() if S.numel() else 0.0) * max(X.shape) * torch.finfo(torch.float64).eps
    return Q @ P[:, S > tol]


def principal_angles(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Principal angles (min(k_x, k_y),) in radians, ascending, between col(X) and col(Y).

    X (n, p), Y (n, q). Same values as ``scipy.linalg.subspace_angles`` (which sorts them
    descending): cosines from svd(Qx^T Qy), small angles from sines for accuracy.
    """
    Qx, Qy = orthonormal_basis(X), orthonormal_basis(Y)
    if Qx.shape[1] < Qy.shape[1]:
        Qx, Qy = Qy, Qx  # Qy: the smaller basis
    cos = torch.linalg.svdvals(Qx.T @ Qy).clamp(0.0, 1.0)  # descending
    angles = torch.arccos(cos)
    small = cos**2 >= 0.5
    if small.any():
        resid = Qy - Qx @ (Qx.T @ Qy)  # (n, k_y)
        sin = torch.linalg.svdvals(resid).clamp(0.0, 1.0).flip(0)  # ascending sines
        angles = torch.where(small, torch.arcsin(sin), angles)
    return torch.sort(angles).values


def subspace_overlap(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Mean cos^2 of the principal angles between col(X) and col(Y), in [0, 1].

    1 when one space contains the other, 0 when orthogonal or either space is empty.
    """
    angles = principal_angles(X, Y)
    return float(torch.cos(angles).pow(2).mean()) if angles.numel() else 0.0


def _pairwise(items: Sequence[object | None], fn: Callable[[object, object], float]) -> torch.Tensor:
    """Symmetric K x K float64 matrix of fn over present items; NaN row/col for None."""
    K = len(items)
    M = torch.full((K, K), math.nan, dtype=torch.float64)
    for i in range(K):
        for j in range(i, K):
            if items[i] is not None and items[j] is not None:
                M[i, j] = M[j, i] = fn(items[i], items[j])
    return M


def b_overlap_matrix(factors: Sequence[LoraFactors | None]) -> torch.Tensor:
    """K x K overlap of the tasks' output (B column) spaces, each B (out, r_k)."""
    return _pairwise([None if f is None else f.B for f in factors], subspace_overlap)


def a_overlap_matrix(factors: Sequence[LoraFactors | None]) -> torch.Tensor:
    """K x K overlap of the tasks' input (A row) spaces, each A (r_k, in)."""
    return _pairwise([None if f is None else f.A.T for f in factors], subspace_overlap)


def task_vector_cosine(factors: Sequence[LoraFactors | None]) -> torch.Tensor:
    """K x K cosine of the flattened deltas s_k B_k A_k, without forming them.

    <s_i B_i A_i, s_j B_j A_j>_F = s_i s_j tr((B_i^T B_j)(A_j A_i^T)): O(r^2 (out + in)) per pair.
    Zero adapter -> 0 (also on its diagonal), absent adapter -> NaN row/col.
    """
    def inner(fi: LoraFactors, fj: LoraFactors) -> float:
        BtB = fi.B.double().T @ fj.B.double()  # (r_i, r_j)
        AAt = fj.A.double() @ fi.A.double().T  # (r_j, r_i)
        return fi.scale * fj.scale * float(torch.trace(BtB @ AAt))

    G = _pairwise(factors, inner)  # (K, K) Gram matrix of the flattened deltas
    norms = torch.diagonal(G).clamp_min(0.0).sqrt()  # NaN stays NaN
    denom = norms[:, None] * norms[None, :]
    cos = G / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, cos, torch.where(G.isnan(), G, torch.zeros_like(G))).clamp(-1.0, 1.0)


def shared_output_directions(
    factors: Sequence[LoraFactors | None], threshold: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pico's crowded B-space: output directions that many tasks' B column spaces share.

    Stacks each present task's orthonormal B basis Q_k (out, r_k) into M (out, sum r_k); for a
    unit u, ||M^T u||^2 = sum_k ||Q_k^T u||^2 in [0, K] counts the tasks that contain u. The SVD
    M = P S W^T gives the directions P (out, m) and share counts S^2 (m,) descending.
    Returns (directions (out, j), counts (j,)) for the j directions with count >= threshold.
    """
    bases = [orthonormal_basis(f.B) for f in factors if f is not None]
    if not bases or sum(b.shape[1] for b in bases) == 0:
        out = next((f.B.shape[0] for f in factors if f is not None), 0)
        return torch.zeros(out, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    P, S, _ = torch.linalg.svd(torch.cat(bases, dim=1), full_matrices=False)
    counts = S**2
    keep = counts >= threshold
    return P[:, keep], counts[keep]


def _rows(H: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Feature rows (n, in) from H (n, in) or (n, T, in) with a (n, T) attention mask."""
    if H.ndim == 3:
        if mask is None:
            raise ValueError("3-D hidden states need the attention mask (padding must not count)")
        return H[mask.bool()]
    return H


def osrm_interference(
    B: torch.Tensor, A: torch.Tensor, scale: float, H: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """OSRM's output shift ||s B A H^T||_F of adapter (B (out, r), A (r, in)) on features H.

    H (n, in) rows of another task's layer inputs, or (n, T, in) with ``mask`` (n, T): padding
    is dropped. Computed as |s| ||B (A H^T)||_F: O(r n (in + out)).
    """
    AH = A.double() @ _rows(H, mask).double().T  # (r, n)
    return abs(float(scale)) * float(torch.linalg.matrix_norm(B.double() @ AH))


def osrm_interference_matrix(
    factors: Sequence[LoraFactors | None],
    hidden: Sequence[torch.Tensor | None],
    masks: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """K x K matrix I[i, j] = ||s_j B_j A_j H_i^T||_F: adapter j's shift on task i's features.

    ``hidden[i]`` are task i's inputs to this module ((n, in) or (n, T, in) with ``masks[i]``).
    The diagonal is each adapter's own (intended) response. NaN where either is absent.
    """
    K = len(factors)
    M = torch.full((K, K), math.nan, dtype=torch.float64)
    for i, H in enumerate(hidden):
        for j, f in enumerate(factors):
            if H is not None and f is not None:
                M[i, j] = osrm_interference(f.B, f.A, f.scale, H, None if masks is None else masks[i])
    return M
