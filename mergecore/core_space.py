"""Core space: where linear merges and every SVD of LoRA deltas are cheap and exact.

For K adapters on one module (out x in) with ranks r_k, R = sum r_k:
    U  (out, R'): orthonormal basis of the columns of [s_1 B_1 ... s_K B_K]
    V  (R'', in): orthonormal basis of the rows of    [A_1; ...; A_K]
    M_k (R', R''): core of task k, so that  s_k B_k A_k == U @ M_k @ V   exactly.
(R' = min(R, out), R'' = min(R, in).) Any merge linear in the deltas, and any SVD-based step,
can run on the small cores in float64 and map back to one exact LoRA of rank <= R:
    B = U @ M, A = V          (exact, rank R'')
or through a truncated SVD of M (compressed). Nothing here ever forms a dense out x in matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergecore.adapters import LoraFactors
from mergecore.errors import MergecoreError


@dataclass(frozen=True)
class CoreSpace:
    U: torch.Tensor  # (out, R') float64, orthonormal columns
    V: torch.Tensor  # (R'', in) float64, orthonormal rows
    cores: torch.Tensor  # (K, R', R'') float64; zero core where an adapter does not target the module

    @property
    def num_tasks(self) -> int:
        return self.cores.shape[0]

    def delta(self, core: torch.Tensor) -> torch.Tensor:
        """Dense delta of a core (out, in). Tests and dense-only methods only."""
        return self.U @ core @ self.V

    def to_lora(self, core: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Factor ``U core V`` as B (out, r) @ A (r, in); returns (B, A, singular values of core).

        ``rank=None`` keeps every nonzero direction (exact up to float64 round-off).
        """
        P, S, Qh = torch.linalg.svd(core, full_matrices=False)  # core = P diag(S) Qh
        r = S.shape[0] if rank is None else min(rank, S.shape[0])
        B = self.U @ (P[:, :r] * S[:r])  # (out, r)
        A = Qh[:r] @ self.V  # (r, in)
        return B, A, S


def stack_factors(factors: list[LoraFactors | None], dtype=torch.float64):
    """Concatenate the adapters' factors: B_cat (out, R) with scales folded in, A_cat (R, in),
    and owner (R,) giving the adapter index of each rank direction."""
    if all(f is None for f in factors):
        raise MergecoreError("no adapter targets this module; nothing to stack")
    Bs, As, owner = [], [], []
    for k, f in enumerate(factors):
        if f is None:
            continue
        Bs.append(f.scale * f.B.to(dtype))
        As.append(f.A.to(dtype))
        owner += [k] * f.rank
    return torch.cat(Bs, dim=1), torch.cat(As, dim=0), torch.tensor(owner, dtype=torch.long, device=Bs[0].device)


def core_space(factors: list[LoraFactors | None]) -> CoreSpace:
    """Build the shared core space of one module from each adapter's factors (None = absent)."""
    B_cat, A_cat, owner = stack_factors(factors)
    U, _ = torch.linalg.qr(B_cat)  # (out, R')
    Q, _ = torch.linalg.qr(A_cat.T)  # (in, R'')
    V = Q.T  # (R'', in)
    UB = U.T @ B_cat  # (R', R)
    AV = A_cat @ V.T  # (R, R'')
    cores = torch.zeros(len(factors), U.shape[1], V.shape[0], dtype=torch.float64, device=U.device)
    for k in range(len(factors)):
        cols = owner == k
        if cols.any():
            cores[k] = UB[:, cols] @ AV[cols]
    return CoreSpace(U=U, V=V, cores=cores)
