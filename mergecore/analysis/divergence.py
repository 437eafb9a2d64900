"""DivMerge's divergence matrix D_{X_i}(theta_i || theta_j) (Fig. 5) and its rank correlation
with cross-task performance (Table 2)."""

from __future__ import annotations

import math
from typing import Hashable, Literal, Mapping

import numpy as np
import torch
from scipy.stats import spearmanr

from mergecore.divergences import EPS, js_div, kl_div

Kind = Literal["js", "kl"]


def mean_divergence(p: torch.Tensor, q: torch.Tensor, kind: Kind = "js") -> float:
    """Mean over rows of D(p || q); p, q (..., C) probabilities, float64, clamped logs.

    Token-level distributions (n, T, C) work too (mean over all leading dims); pass only the
    real tokens.
    """
    p, q = p.double(), q.double()
    logq = q.clamp_min(EPS).log()
    fn = {"js": js_div, "kl": kl_div}[kind]
    return float(fn(p, logq).mean())


def divergence_matrix(
    probs: Mapping[Hashable, Mapping[Hashable, torch.Tensor]], kind: Kind = "js"
) -> torch.Tensor:
    """K x K float64 D[i, j] = mean_{x in X_i} D(p_i(x) || p_j(x)).

    ``probs[i][j]`` (n_i, C_i): model j's (expert j's) probabilities on task i's inputs; the
    task keys double as model keys and fix the order (``list(probs)``). The reference p_i is
    ``probs[i][i]``. Diagonal is 0; a missing ``probs[i][j]`` gives NaN.
    """
    keys = list(probs)
    D = torch.full((len(keys), len(keys)), math.nan, dtype=torch.float64)
    for a, i in enumerate(keys):
        ref = probs[i][i]
        for b, j in enumerate(keys):
            if a == b:
                D[a, b] = 0.0
            elif j in probs[i]:
                D[a, b] = mean_divergence(ref, probs[i][j], kind)
    return D


def spearman_with_scores(
    D: torch.Tensor | np.ndarray, S: torch.Tensor | np.ndarray, per_row: bool = False
) -> float | np.ndarray:
    """Spearman rank correlation between divergences D (K, K) and scores S (K, K).

    S[i, j] relates model j on task i: pass score *drops* (expert score - score of j on task i)
    for a positive correlation, or negate scores as DivMerge Table 2 does. ``per_row=False``:
    one correlation over all off-diagonal pairs. ``per_row=True``: Table 2's per-task
    correlations over j (diagonal included), shape (K,). NaN pairs are skipped.
    """
    D, S = np.asarray(D, dtype=np.float64), np.asarray(S, dtype=np.float64)
    if not per_row:
        off = ~np.eye(D.shape[0], dtype=bool)
        return _spearman(D[off], S[off])
    return np.array([_spearman(D[i], S[i]) for i in range(D.shape[0])])


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho over the finite pairs; NaN with fewer than 3 or a constant side."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)
