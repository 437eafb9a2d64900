"""Shared types of the static merge methods: the per-module result, the method record, the
driver over an AdapterSet and the CLI parameter parser.

A method is a pure function of one module's factors:

    fn(factors: list[LoraFactors | None], weights: list[float], params, features=None) -> ModuleMerge

``factors[k]`` is adapter k's (A (r_k, in), B (out, r_k), scale) or None where adapter k does not
target the module (zero delta). ``weights`` holds one coefficient per adapter (explicit, or the
method's default from its params). ``features`` is only passed to methods with
``needs_features`` (OSRM).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mergecore.adapters import LoraFactors
from mergecore.errors import MergecoreError
from mergecore.fields import check_number

SPACES = ("lora-factors", "core", "dense")


RANK_RTOL = 1e-10  # singular values below RANK_RTOL * max are numerically zero (float64 cores)


@dataclass(frozen=True)
class ModuleMerge:
    """Merged update of one module: factored (delta = B @ A) or dense (delta = dense)."""

    space: str  # "lora-factors" | "core" | "dense": where the method computed it
    B: torch.Tensor | None = None  # (out, r) float32/float64
    A: torch.Tensor | None = None  # (r, in)
    dense: torch.Tensor | None = None  # (out, in) float32
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if (self.dense is None) == (self.B is None or self.A is None):
            raise ValueError("a ModuleMerge is either factored (B and A) or dense, not both or neither")

    @property
    def is_factored(self) -> bool:
        return self.dense is None

    @property
    def rank(self) -> int | None:
        return self.A.shape[0] if self.is_factored else None

    def delta(self) -> torch.Tensor:
        """Dense delta (out, in) in float64; for tests, export and analysis, never a hot path."""
        return self.B.double() @ self.A.double() if self.is_factored else self.dense.double()


def numerical_rank(S: torch.Tensor) -> int:
    """Number of singular values (descending) above RANK_RTOL * S[0]; 0 for an all-zero S."""
    if S.numel() == 0:
        return 0
    return int((S > RANK_RTOL * S[0]).sum())  # all-zero S: nothing is above 0


def _qr_core(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B @ A = Qb core Qa^T from thin QRs of B (out, r) and A^T (in, r): a small (r, r) core, float64."""
    Qb, Rb = torch.linalg.qr(B.double())
    Qa, Ra = torch.linalg.qr(A.double().T)
    return Qb, Rb @ Ra.T, Qa


def singular_values(m: ModuleMerge) -> torch.Tensor:
    """Every singular value of the module's delta, float64 descending; a factored delta is never formed
    densely (cost O((out + in) r^2)); a dense one (TIES, DARE) is SVD'd as it is."""
    if not m.is_factored:
        return torch.linalg.svdvals(m.dense.double())
    return torch.linalg.svdvals(_qr_core(m.B, m.A)[1])


def thin_svd(m: ModuleMerge, drop_zero: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U (out, q), S (q,), Vt (q, in)) of the module's delta, float64, S descending; directions with
    S <= RANK_RTOL * S[0] dropped unless ``drop_zero`` is False."""
    if m.is_factored:
        Qb, core, Qa = _qr_core(m.B, m.A)
        P, S, Qh = torch.linalg.svd(core, full_matrices=False)
        U, Vt = Qb @ P, Qh @ Qa.T
    else:
        U, S, Vt = torch.linalg.svd(m.dense.double(), full_matrices=False)
    q = numerical_rank(S) if drop_zero else S.shape[0]
    return U[:, :q], S[:q], Vt[:q]


@dataclass(frozen=True)
class MergeMethod:
    """One registered merge method."""

    name: str
    params_cls: type  # frozen dataclass; each field has metadata["help"]
    space: str  # where the maths runs: "lora-factors" | "core" | "dense"
    fn: Callable[..., ModuleMerge]
    summary: str
    default_weights: Callable[[int, Any], list[float]]  # (num_adapters, params) -> weights
    needs_features: bool = False  # OSRM: merge_adapters must get ``features``

    def param_help(self) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in dataclasses.fields(self.params_cls)}


def lam_weights(num: int, params: Any) -> list[float]:
    """Default weights: ``params.lam`` for every adapter."""
    return [float(params.lam)] * num


def check_weights(weights: list[float], num: int) -> list[float]:
    w = [float(x) for x in weights]
    if len(w) != num:
        raise MergecoreError(f"got {len(w)} weights for {num} adapters; give one weight per adapter")
    if not all(math.isfinite(x) for x in w):
        raise MergecoreError(f"weights must be finite numbers, got {w}")
    return w


def present(factors: list[LoraFactors | None]) -> list[int]:
    """Indices of the adapters that target this module; refuses a module nobody targets."""
    idx = [k for k, f in enumerate(factors) if f is not None]
    if not idx:
        raise MergecoreError("no adapter targets this module; merge only modules of the AdapterSet")
    return idx


def module_shape(factors: list[LoraFactors | None]) -> tuple[int, int]:
    f = factors[present(factors)[0]]
    return f.B.shape[0], f.A.shape[1]


def dense_deltas(factors: list[LoraFactors | None], dtype=torch.float32) -> torch.Tensor:
    """(K, out, in) stack of s_k B_k A_k in ``dtype``; zeros for an absent adapter."""
    out, inn = module_shape(factors)
    ref = factors[present(factors)[0]].A
    d = torch.zeros(len(factors), out, inn, dtype=dtype, device=ref.device)
    for k, f in enumerate(factors):
        if f is not None:
            d[k] = (f.scale * f.B.to(dtype)) @ f.A.to(dtype)
    return d


def check_finite(method: str, params: Any, *keys: str) -> None:
    """Each named field of a method's params (None where the field allows it) is a finite number."""
    for key in keys:
        if getattr(params, key) is not None:
            check_number(f"{method}: {key}", getattr(params, key), f"--param {key}")


def check_density(name: str, density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise MergecoreError(f"{name}: density must be in (0, 1] (fraction of entries kept), got {density}")


def check_choice(name: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MergecoreError(f"{name}: {key} must be one of {', '.join(choices)}, got {value!r}")
