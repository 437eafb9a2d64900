"""Spectra of LoRA deltas without ever forming (or SVD-ing) a dense out x in matrix.

For ``delta = s * B @ A`` with B (out, r), A (r, in): thin QR of both factors, B = Q_b R_b and
A^T = Q_a R_a, gives delta = s * Q_b (R_b R_a^T) Q_a^T, so its singular values are those of the
small r x r matrix R_b R_a^T (times |s|). Merged deltas go through the shared core space.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergecore.adapters import LoraFactors
from mergecore.core_space import core_space
from mergecore.merges.base import ModuleMerge, singular_values


def lora_singular_values(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Singular values (min(out, in, r),) float64, descending, of ``scale * B @ A``; B (out, r), A (r, in).
    Cost O((out + in) r^2), never a dense out x in matrix."""
    return singular_values(ModuleMerge("lora-factors", B=B, A=A)) * abs(float(scale))


def module_spectra(
    factors: Sequence[LoraFactors | None],
    coefs: Sequence[float] | torch.Tensor | None = None,
    merged_cores: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Spectra of every task's delta and of merged deltas on one module.

    Returns ``{"tasks": [Tensor (r_k,) or None], "merged": Tensor, "cores": {name: Tensor}}``:
    ``merged`` is the spectrum of ``sum_k coefs[k] * s_k B_k A_k`` (coefs default to 1: task
    arithmetic), computed on the core space cores; ``merged_cores`` are extra merged cores
    (R', R'') built in ``core_space(factors)`` (e.g. TSV-M, Iso-C), deterministic for the same
    factors, and ``cores`` holds their spectra. All float64, descending.
    """
    tasks = [None if f is None else lora_singular_values(f.B, f.A, f.scale) for f in factors]
    out: dict = {"tasks": tasks, "merged": torch.zeros(0, dtype=torch.float64), "cores": {}}
    if all(f is None for f in factors):
        return out
    cs = core_space(list(factors))
    c = torch.ones(cs.num_tasks) if coefs is None else torch.as_tensor(coefs, dtype=torch.float64)
    c = c.to(torch.float64)  # (K,)
    out["merged"] = torch.linalg.svdvals(torch.einsum("k,kij->ij", c, cs.cores))
    out["cores"] = {name: torch.linalg.svdvals(core.double()) for name, core in (merged_cores or {}).items()}
    return out


def energy_at_rank(s: torch.Tensor, r: int) -> float:
    """Share of spectral energy in the top ``r`` singular values: sum_{i<r} s_i^2 / sum s_i^2, float64.

    The retained energy of a rank-r truncation (the spectra lens's ``energy_at_r``, the compressed export's
    report). ``s`` (n,) need not be sorted (it is sorted here); r <= 0 keeps nothing, r >= n everything.
    1.0 for an all-zero spectrum: truncating a zero update loses nothing, as at any r >= the numerical rank.
    """
    s2 = torch.sort(s.double().abs(), descending=True).values ** 2
    total = float(s2.sum())
    return float(s2[: max(int(r), 0)].sum()) / total if total > 0 else 1.0


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli (2007) effective rank exp(H(p)), p = s / sum s; 0 log 0 = 0.

    ``s`` (n,) nonnegative. n for n equal nonzero values; 0.0 for an all-zero spectrum.
    """
    s = s.double().abs()
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    H = -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum()
    return float(torch.exp(H))
