"""Core space against dense recomputation: exact cores, and to_lora against numpy's SVD of the dense delta."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergecore.adapters import LoraFactors
from mergecore.core_space import core_space


def _factors(seed=0, out=9, inp=7, ranks=(2, 3), scales=(2.0, 0.5)):
    g = torch.Generator().manual_seed(seed)
    return [LoraFactors(A=torch.randn(r, inp, generator=g), B=torch.randn(out, r, generator=g), scale=s)
            for r, s in zip(ranks, scales)]


def test_cores_reproduce_each_adapters_delta_and_absent_adapters_are_zero():
    factors = _factors()
    cs = core_space([factors[0], None, factors[1]])
    assert cs.num_tasks == 3 and cs.cores.dtype == torch.float64
    for k, f in ((0, factors[0]), (2, factors[1])):
        np.testing.assert_allclose(cs.delta(cs.cores[k]).numpy(), f.delta().numpy(), atol=1e-10)
    assert float(cs.cores[1].abs().max()) == 0.0


def test_to_lora_keeps_every_direction_by_default():
    cs = core_space(_factors(seed=1))
    core = 0.3 * cs.cores[0] - 1.2 * cs.cores[1]
    dense = cs.delta(core).numpy()
    B, A, S = cs.to_lora(core)
    np.testing.assert_allclose((B @ A).numpy(), dense, atol=1e-10)
    sv = np.linalg.svd(dense, compute_uv=False)
    np.testing.assert_allclose(S.numpy(), sv[: S.shape[0]], atol=1e-10)  # the core's spectrum is the delta's
    assert B.shape[1] == A.shape[0] == S.shape[0] == 5  # R = 2 + 3 nonzero directions


@pytest.mark.parametrize("rank", [1, 3])
def test_to_lora_with_a_rank_is_the_best_rank_r_approximation(rank):
    cs = core_space(_factors(seed=2))
    core = cs.cores[0] + 0.7 * cs.cores[1]
    dense = cs.delta(core).numpy()
    u, s, vt = np.linalg.svd(dense)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]  # Eckart-Young, from numpy's SVD of the dense delta
    B, A, S = cs.to_lora(core, rank=rank)
    assert B.shape == (9, rank) and A.shape == (rank, 7)
    np.testing.assert_allclose((B @ A).numpy(), best, atol=1e-10)
    np.testing.assert_allclose(S.numpy(), s[:5], atol=1e-10)  # every singular value, not only the kept ones


def test_to_lora_with_a_rank_above_the_core_keeps_all_of_it():
    cs = core_space(_factors(seed=3))
    core = cs.cores[0] - cs.cores[1]
    B, A, _ = cs.to_lora(core, rank=50)
    assert B.shape[1] == A.shape[0] == 5
    np.testing.assert_allclose((B @ A).numpy(), cs.delta(core).numpy(), atol=1e-10)


def test_a_module_no_adapter_targets_is_refused_by_name():
    from mergecore.errors import MergecoreError

    with pytest.raises(MergecoreError, match=r"^no adapter targets this module; nothing to stack$"):
        core_space([None, None])


def test_the_owner_index_lives_on_the_factors_device():
    """Factors on an accelerator index with an owner there too ('meta' stands in for a GPU on CPU-only machines)."""
    from mergecore.core_space import stack_factors

    f = _factors()
    meta = [type(x)(A=x.A.to("meta"), B=x.B.to("meta"), scale=x.scale) for x in f]
    B, A, owner = stack_factors([meta[0], None, meta[1]])
    assert B.device.type == A.device.type == owner.device.type == "meta"
    assert B.shape == (9, 5) and A.shape == (5, 7)
    assert stack_factors([f[0], None, f[1]])[2].tolist() == [0, 0, 2, 2, 2]
