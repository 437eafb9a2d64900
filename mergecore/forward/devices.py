"""Where a wrapped model computes when accelerate placed it (``placement.LoadParams.device_map``).

A dispatched base carries accelerate hooks: a module's hook moves its inputs to its execution device and, when
the module is offloaded (weights on the meta device until its forward), loads its own weights. transformers
attaches the offloading hooks to the modules that hold the weights (each Linear), so wrapping a Linear keeps its
hook working unchanged. ``layer_device`` finds where a wrapped Linear computes (its factors go there) and
``main_device`` is where inputs go and outputs come back.
"""

from __future__ import annotations

import torch
from torch import nn


def _hooks(hook) -> list:
    """The accelerate hooks in ``hook`` (a SequentialHook holds several)."""
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def as_device(device) -> torch.device:
    """accelerate's device names: an int is a CUDA index."""
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def layer_device(model: nn.Module, name: str, base: nn.Module) -> torch.device:
    """Where module ``name`` computes: the execution device of the nearest accelerate hook on it or an ancestor
    (an offloaded layer's weights sit on the meta device), else its weight's device."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        for hook in _hooks(getattr(model.get_submodule(".".join(parts[:i])), "_hf_hook", None)):
            if getattr(hook, "execution_device", None) is not None:
                return as_device(hook.execution_device)
    return base.weight.device


def main_device(model: nn.Module) -> torch.device:
    """Where inputs go: accelerate's main device for a dispatched model (the first device of its map that is not
    an offload target; outputs come back there), else the device of its first parameter."""
    devices = list((getattr(model, "hf_device_map", None) or {}).values())
    if not devices:
        return next(model.parameters()).device
    placed = [d for d in devices if d not in ("cpu", "disk")]
    return as_device(placed[0]) if placed else torch.device("cpu")
