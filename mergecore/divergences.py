"""Objectives over label distributions: pure functions, numerically safe in float32.

Each takes the *reference* ``p`` (n, C) — expert probabilities, or integer labels for CE, or
nothing for entropy — and the merged model's log-probabilities ``logq`` (n, C), and returns a
per-example loss (n,). The learner averages over a task's rows and sums over tasks
(SourceJS Eq. 3), then adds the L2 pull lambda ||Gamma - Gamma_0||^2 (SourceJS Eq. 7) with
Gamma_0 = 1/K for every coefficient as the paper writes it (``LearnParams.l2_target='uniform'``),
or the start point (``l2_target='start'``); spectral gains are pulled toward 1 (the start merge).

    js       D_JS(p || q) = 1/2 KL(p || m) + 1/2 KL(q || m),  m = (p + q) / 2   (SourceJS Eq. 4)
    kl       KL(p || q)   expert || merged (DivMerge's KL variant)
    rkl      KL(q || p)   merged || expert
    entropy  H(q)         reference-free (AdaMerging; SourceJS Eq. 2)
    ce       -log q[y]    supervised, on a small labeled subset
"""

from __future__ import annotations

import torch

EPS = 1e-12


def _xlogy(p: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """p * logp with the 0 * log 0 = 0 convention."""
    return torch.where(p > 0, p * logp, torch.zeros_like(p))


def kl_div(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, p given as probabilities, q as log-probabilities."""
    logp = p.clamp_min(EPS).log()
    return (_xlogy(p, logp) - _xlogy(p, logq)).sum(-1)


def js_div(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row (natural log; bounded by log 2)."""
    q = logq.exp()
    logm = (0.5 * (p + q)).clamp_min(EPS).log()
    logp = p.clamp_min(EPS).log()
    kl_pm = (_xlogy(p, logp) - _xlogy(p, logm)).sum(-1)
    kl_qm = (_xlogy(q, logq) - _xlogy(q, logm)).sum(-1)
    return 0.5 * kl_pm + 0.5 * kl_qm


def reverse_kl(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per row."""
    q = logq.exp()
    return (_xlogy(q, logq) - q * p.clamp_min(EPS).log()).sum(-1)


def entropy(_ref, logq: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of q per row."""
    return -_xlogy(logq.exp(), logq).sum(-1)


def cross_entropy(labels: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """-log q[y] per row; ``labels`` are class indices (n,)."""
    return -logq.gather(-1, labels.long().view(-1, 1)).squeeze(-1)
