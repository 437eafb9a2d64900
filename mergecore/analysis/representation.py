"""Representation bias (Yang et al. 2024; LoRA-DV Fig. 2b): the L1 distance between the hidden
states of the merged model and of the task's expert, per layer, over real tokens only."""

from __future__ import annotations

from typing import Literal, Sequence

import torch


def representation_bias(
    merged_hidden: Sequence[torch.Tensor],
    expert_hidden: Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Per-layer bias (L,) float64 between merged and expert hidden states.

    Each list holds L tensors (n, T, d) (e.g. HF ``hidden_states``) or (n, d) (pooled).
    ``mask`` (n, T): attention mask; padding tokens do not count. Per token, the L1 distance
    over the hidden dim: its mean over d (``reduction="mean"``, F.l1_loss scale, comparable
    across widths) or its sum (``"sum"``, the L1 norm); then averaged over real tokens.
    """
    if len(merged_hidden) != len(expert_hidden):
        raise ValueError(f"{len(merged_hidden)} merged layers vs {len(expert_hidden)} expert layers")
    out = torch.zeros(len(merged_hidden), dtype=torch.float64)
    for layer, (hm, he) in enumerate(zip(merged_hidden, expert_hidden)):
        dist = (hm.double() - he.double()).abs()  # (n, T, d) or (n, d)
        dist = dist.mean(-1) if reduction == "mean" else dist.sum(-1)  # (n, T) or (n,)
        if mask is not None and dist.ndim == 2:
            w = mask.to(dist.dtype)
            out[layer] = (dist * w).sum() / w.sum().clamp_min(1.0)
        else:
            out[layer] = dist.mean()
    return out


def mean_representation_bias(
    merged_hidden: Sequence[torch.Tensor],
    expert_hidden: Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> float:
    """Representation bias averaged over layers (one number per task for a bar chart)."""
    return float(representation_bias(merged_hidden, expert_hidden, mask, reduction).mean())
