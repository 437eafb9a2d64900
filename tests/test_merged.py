"""The merged update as data, against dense recomputations."""

from __future__ import annotations

import torch

from mergecore.adapters import load_adapters
from mergecore.merged import coefs_to_merge, merge_to_tensors, tensors_to_merge


def test_coefs_to_merge_equals_the_dense_weighted_sum(tiny_setup):
    """Per module l: B @ A == sum_k c_lk s_k B_k A_k, for per-module coefficients of both signs."""
    _, dirs = tiny_setup
    adapters = load_adapters(dirs)
    coefs = torch.randn(len(adapters.modules), len(adapters), generator=torch.Generator().manual_seed(3)) * 2
    merge = coefs_to_merge(adapters, coefs)
    assert list(merge) == adapters.modules
    assert all(m.B.dtype == m.A.dtype == torch.float32 for m in merge.values())  # stored and exported in float32
    for l, name in enumerate(adapters.modules):
        dense = sum(float(coefs[l, k]) * f.delta() for k, f in enumerate(adapters.factors(name)) if f is not None)
        got = merge[name].delta()
        assert float((got - dense).abs().max()) <= 1e-5 * float(dense.abs().max())


def test_tensor_round_trip_keeps_every_module(tiny_setup):
    _, dirs = tiny_setup
    adapters = load_adapters(dirs)
    merge = coefs_to_merge(adapters, torch.full((len(adapters.modules), len(adapters)), 0.5))
    back = tensors_to_merge(merge_to_tensors(merge))
    assert list(back) == list(merge)
    for name, m in merge.items():
        assert torch.equal(back[name].B, m.B) and torch.equal(back[name].A, m.A)
