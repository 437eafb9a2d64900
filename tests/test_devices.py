"""Where a wrapped layer computes and where inputs go, for accelerate-dispatched bases (hooks and device maps are
stood in for by plain objects: the logic is read on a CPU-only machine; tests/test_placement.py runs real maps)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from mergecore.forward.devices import as_device, layer_device, main_device


def tree() -> nn.Module:
    block = nn.Module()
    block.attn = nn.Module()
    block.attn.q = nn.Linear(4, 4)
    model = nn.Module()
    model.block = block
    return model


def test_as_device_reads_accelerate_names():
    assert as_device(0) == torch.device("cuda:0") and as_device(3) == torch.device("cuda:3")
    assert as_device("cpu") == torch.device("cpu") and as_device("cuda:1") == torch.device("cuda:1")


def test_layer_device_is_the_nearest_hooks_execution_device():
    model = tree()
    q = model.block.attn.q
    assert layer_device(model, "block.attn.q", q) == torch.device("cpu")  # no hook: the weight's device
    model.block._hf_hook = SimpleNamespace(execution_device=1)
    assert layer_device(model, "block.attn.q", q) == torch.device("cuda:1")  # an ancestor's hook
    q._hf_hook = SimpleNamespace(hooks=[SimpleNamespace(execution_device=None), SimpleNamespace(execution_device="cuda:2")])
    assert layer_device(model, "block.attn.q", q) == torch.device("cuda:2")  # its own (a SequentialHook) wins
    q._hf_hook = SimpleNamespace(execution_device=None)
    assert layer_device(model, "block.attn.q", q) == torch.device("cuda:1")  # a hook with no device is skipped
    q._hf_hook = SimpleNamespace()  # a hook that moves nothing (no execution_device at all)
    assert layer_device(model, "block.attn.q", q) == torch.device("cuda:1")
    model._hf_hook = SimpleNamespace(execution_device=0)
    del model.block._hf_hook
    assert layer_device(model, "block.attn.q", q) == torch.device("cuda:0")  # the root's


def test_main_device_is_the_first_device_that_is_not_an_offload_target():
    model = tree()
    assert main_device(model) == torch.device("cpu")  # not dispatched: its first parameter's device
    model.hf_device_map = {"block.embed": "cpu", "block.attn": 1, "block.mlp": 0}
    assert main_device(model) == torch.device("cuda:1")
    model.hf_device_map = {"block.embed": "disk", "block.attn": "cuda:2"}
    assert main_device(model) == torch.device("cuda:2")
    model.hf_device_map = {"block.embed": "cpu", "block.attn": "disk"}
    assert main_device(model) == torch.device("cpu")
    model.hf_device_map = {}
    assert main_device(model) == torch.device("cpu")
