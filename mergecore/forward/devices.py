"""Where a wrapped model computes when accelerate placed it (``placement.LoadParams.device_map``).

A dispatched base carries accelerate hooks: a block's hook moves its inputs to the block's execution device and,
when the block is offloaded (its weights on the meta device until its forward), loads the weights by their names
in the block. ``layer_device`` finds where a wrapped Linear computes (its factors go there), ``follow_offload``
points the hooks at the wrapped layers' weights, ``main_device`` is where inputs go and outputs come back.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def _hooks(hook) -> list:
    """The accelerate hooks in ``hook`` (a SequentialHook holds several)."""
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def layer_device(model: nn.Module, name: str, base: nn.Module) -> torch.device:
    """Where module ``name`` computes: the execution device of the nearest accelerate hook on it or an ancestor
    (an offloaded layer's weights sit on the meta device), else its weight's device."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        for hook in _hooks(getattr(model.get_submodule(".".join(parts[:i])), "_hf_hook", None)):
            device = getattr(hook, "execution_device", None)
            if device is not None:
                return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return base.weight.device


class _Renamed(Mapping):
    """An offload hook's weights map read through the names wrapping gave its parameters (q.base.weight -> q.weight)."""

    def __init__(self, inner, renames: dict[str, str]):
        self.inner, self.renames = inner, renames

    def __getitem__(self, key: str):
        return self.inner[self.renames.get(key, key)]

    def __iter__(self):
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def follow_offload(model: nn.Module, wrapped: list[str]) -> None:
    """Point accelerate's offload hooks at the wrapped layers' weights: a hook loads a block's offloaded weights
    by their names in the block, and wrapping a Linear moves ``q.weight`` to ``q.base.weight``."""
    for path, module in model.named_modules():
        for hook in _hooks(getattr(module, "_hf_hook", None)):
            if not getattr(hook, "offload", False) or getattr(hook, "weights_map", None) is None:
                continue
            inside = [n[len(path) + 1:] if path else n for n in wrapped if not path or n.startswith(path + ".")]
            renames = {f"{rel}.base.{leaf}": f"{rel}.{leaf}" for rel in inside for leaf in ("weight", "bias")}
            if renames:
                hook.weights_map = _Renamed(hook.weights_map, renames)


def main_device(model: nn.Module) -> torch.device:
    """Where inputs go: accelerate's main device for a dispatched model (the first non-offloaded device in its
    map, outputs come back there), else the device of its first parameter."""
    placed = [d for d in (getattr(model, "hf_device_map", None) or {}).values() if d not in ("cpu", "disk")]
    if placed:
        return torch.device(f"cuda:{placed[0]}" if isinstance(placed[0], int) else placed[0])
    if getattr(model, "hf_device_map", None):
        return torch.device("cpu")
    return next(model.parameters()).device
