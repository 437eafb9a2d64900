"""Coefficient stability figures (SourceJS Fig. 2): how spread out, and how often negative,
the learned merge coefficients are."""

from __future__ import annotations

import math

import torch


def stability(coefs: torch.Tensor) -> dict[str, float | int]:
    """Summary of coefficients (K,) task-wise or (L, K) layer-wise, over all finite entries.

    Returns range (max - min), std (population, over all entries), negatives (count < 0),
    min, max, mean. An empty or all-NaN input gives NaN figures and 0 negatives.
    """
    c = torch.as_tensor(coefs, dtype=torch.float64).reshape(-1)
    c = c[torch.isfinite(c)]
    if c.numel() == 0:
        nan = math.nan
        return {"range": nan, "std": nan, "negatives": 0, "min": nan, "max": nan, "mean": nan}
    lo, hi = float(c.min()), float(c.max())
    return {
        "range": hi - lo,
        "std": float(c.std(correction=0)),
        "negatives": int((c < 0).sum()),
        "min": lo,
        "max": hi,
        "mean": float(c.mean()),
    }
