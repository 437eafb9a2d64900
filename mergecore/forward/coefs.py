"""Coefficient sources: where a MergeModel's merge coefficients come from.

A source implements ``lora_term(layer, x)`` -> the merged LoRA contribution of one wrapped
layer. Learnable sources hold their coefficients as ``nn.Parameter`` (float32) and expose
``to_matrix()`` -> (L, K) coefficients per module, which is what runs store and export folds in.

    TaskCoefs      gamma (K,)              one coefficient per task (AdaMerging task-wise, SourceJS)
    LayerCoefs     gamma (L, K)            one row per LoRA module (SourceJS layer-wise: 72 x 8)
    BlockCoefs     gamma (G, K)            one row per transformer block, shared by its modules
    RowRouting     onehot (N, K)           row i uses expert k only (expert predictions in one pass)
    SpectralCoefs  scale per singular value of each module's merged delta (LoRA-DV); see spectral.py
"""

from __future__ import annotations

import re
from typing import Protocol

import torch
from torch import nn

from mergecore.errors import MergecoreError


class CoefficientSource(Protocol):
    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor: ...


class MatrixCoefs(nn.Module):
    """Coefficients as a (G, K) parameter; module l reads row ``group[l]``."""

    def __init__(self, init: torch.Tensor, group: torch.Tensor, kind: str):
        super().__init__()
        self.gamma = nn.Parameter(init.detach().clone().float())  # (G, K)
        self.register_buffer("group", group.long(), persistent=False)  # (L,)
        self.group_of = [int(g) for g in group]  # python ints: indexing by them never syncs the device
        self.kind = kind
        self.transform = None  # optional callable (G, K) -> (G, K): clamp / softmax switches

    def effective(self) -> torch.Tensor:
        """The coefficients the forward uses, (G, K)."""
        return self.gamma if self.transform is None else self.transform(self.gamma)

    def to_matrix(self) -> torch.Tensor:
        """Coefficients per module, (L, K)."""
        return self.effective()[self.group]

    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor:
        c = self.effective()[self.group_of[layer.index]]  # (K,)
        return layer.factored(x, layer.expand_coefs(c))


def task_coefs(init: torch.Tensor, num_modules: int) -> MatrixCoefs:
    """Task-wise: one shared row (K,) for every module."""
    return MatrixCoefs(init.reshape(1, -1), torch.zeros(num_modules, dtype=torch.long), "task")


def layer_coefs(init: torch.Tensor, num_modules: int) -> MatrixCoefs:
    """Layer-wise: one row per LoRA module. ``init`` is (K,) or (L, K)."""
    init = init if init.ndim == 2 else init.repeat(num_modules, 1)  # (K,) -> (L, K)
    return MatrixCoefs(init, torch.arange(num_modules), "layer")


_BLOCK = re.compile(r"\.(?:layer|layers|block|h)\.(\d+)\.")


def block_index(modules: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Group modules by transformer block: ('encoder.layer.3.attention...' -> 'encoder.3')."""
    keys = []
    for m in modules:
        hit = _BLOCK.search("." + m + ".")  # padded: a name may start or end with its block ('h.0.attn')
        if hit is None:
            keys.append(m)
            continue
        prefix = m[: max(hit.start() - 1, 0)]  # hit.start() counts the one leading '.' of the padding
        keys.append(f"{prefix}.{hit.group(1)}" if prefix else hit.group(1))
    names = list(dict.fromkeys(keys))
    return torch.tensor([names.index(k) for k in keys], dtype=torch.long), names


def block_coefs(init: torch.Tensor, modules: list[str]) -> MatrixCoefs:
    group, names = block_index(modules)
    return MatrixCoefs(init.repeat(len(names), 1), group, "block")  # (K,) -> (G, K)


class FixedCoefs:
    """A constant (L, K) coefficient matrix (uniform, static or stored learned merges)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix.detach().float()
        self._on: dict = {}  # device -> matrix there (copied once, not per layer and step)

    def to_matrix(self) -> torch.Tensor:
        return self.matrix

    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:
            self._on[x.device] = self.matrix.to(x.device)
        return layer.factored(x, layer.expand_coefs(self._on[x.device][layer.index]))


class RowRouting:
    """Per-row one-hot coefficients from the batch's segments: rows of task k use expert k only."""

    def __init__(self, slot, num_tasks: int, experts: list[int] | None = None):
        self.slot, self.num_tasks, self.experts = slot, num_tasks, experts

    def onehot(self, device) -> torch.Tensor:
        """(N, K) routing of the current batch, built once per batch (not per layer)."""
        segments = self.slot.segments
        key = (tuple(segments.spans), device)
        if getattr(self, "_key", None) != key:
            rows = segments.task_of_rows(device=device)  # (N,)
            if self.experts is not None:
                rows = torch.tensor(self.experts, device=device)[rows]
            self._key, self._onehot = key, torch.nn.functional.one_hot(rows, self.num_tasks).float()
        return self._onehot

    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor:
        return layer.factored(x, layer.expand_coefs(self.onehot(x.device)))


def coefficient_transform(clamp: bool, softmax: bool):
    """Optional coefficient transforms: clamp to [0, 1], or softmax over tasks."""
    if clamp and softmax:
        raise MergecoreError("choose at most one of clamp and softmax for the coefficients")
    if clamp:
        return lambda g: g.clamp(0.0, 1.0)
    if softmax:
        return lambda g: torch.softmax(g, dim=-1)
    return None
