"""LoRA-DV spectral source against numpy's SVD of the dense merged delta (LoRA-DV Eq. 8 / 11)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mergecore.forward.spectral import SpectralCoefs
from mergecore.merges.base import ModuleMerge, thin_svd


def _factored(out, r, inp, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return ModuleMerge("lora-factors", B=scale * torch.randn(out, r, generator=g, dtype=torch.float64),
                       A=torch.randn(r, inp, generator=g, dtype=torch.float64))


def _check_svd(m: ModuleMerge, rank: int):
    dense = m.delta().numpy()
    U, S, Vt = thin_svd(m)
    assert U.dtype == S.dtype == Vt.dtype == torch.float64
    assert U.shape == (dense.shape[0], rank) and S.shape == (rank,) and Vt.shape == (rank, dense.shape[1])
    np.testing.assert_allclose(S.numpy(), np.linalg.svd(dense, compute_uv=False)[:rank], rtol=1e-10)
    np.testing.assert_allclose(((U * S) @ Vt).numpy(), dense, atol=1e-10 * np.abs(dense).max())
    np.testing.assert_allclose((U.T @ U).numpy(), np.eye(rank), atol=1e-10)
    np.testing.assert_allclose((Vt @ Vt.T).numpy(), np.eye(rank), atol=1e-10)


@pytest.mark.parametrize("out,r,inp", [(9, 3, 7), (3, 5, 8), (8, 5, 4)])  # rank below, above out, above in
def test_thin_svd_of_factored_merge_equals_numpy_svd(out, r, inp):
    _check_svd(_factored(out, r, inp), min(out, r, inp))


def test_thin_svd_of_dense_merge_equals_numpy_svd():
    g = torch.Generator().manual_seed(4)
    _check_svd(ModuleMerge("dense", dense=torch.randn(6, 5, generator=g)), 5)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_thin_svd_drops_only_numerically_zero_directions_at_any_scale(scale):
    """A rank-3 delta through rank-4 factors: 3 directions whatever the delta's size (the cut is relative),
    including a genuine direction 100x weaker than the strongest."""
    m = _factored(10, 4, 8, seed=5)
    B = m.B.clone()
    B[:, 3] = B[:, 0] - 2 * B[:, 1]  # a dependent column: rank 3
    u, _, vt = np.linalg.svd(B.numpy() @ m.A.numpy(), full_matrices=False)
    dense = (u[:, :3] * np.array([3.0, 1.0, 0.03])) @ vt[:3]  # spread spectrum, exactly rank 3
    qb, rb = np.linalg.qr(dense)  # the same delta as factors (10, 8) @ (8, 8)
    for merge in (ModuleMerge("core", B=torch.from_numpy(scale * qb), A=torch.from_numpy(rb)),
                  ModuleMerge("dense", dense=torch.from_numpy(scale * dense))):
        _, S, _ = thin_svd(merge)
        np.testing.assert_allclose(S.numpy(), scale * np.array([3.0, 1.0, 0.03]), rtol=1e-8)


def _merge():
    return {"enc.0.q": _factored(6, 2, 5, seed=1, scale=0.1), "enc.0.v": _factored(4, 3, 5, seed=2, scale=0.1)}


def _rethought(m: ModuleMerge, lam: np.ndarray) -> np.ndarray:
    """U diag(Lambda * sigma) V^T from numpy's SVD of the dense delta."""
    u, s, vt = np.linalg.svd(m.delta().numpy(), full_matrices=False)
    r = len(lam)
    return (u[:, :r] * (lam * s[:r])) @ vt[:r]


def test_gains_start_at_one_concatenated_per_module_in_order():
    merge = _merge()
    src = SpectralCoefs(merge, list(merge))
    assert src.gamma.shape == (5,) and bool((src.gamma == 1).all())  # Lambda_l of ranks 2 and 3, init ones
    lam = torch.tensor([0.5, 2.0, -1.0, 3.0, 0.25])
    with torch.no_grad():
        src.gamma.copy_(lam)
    out = src.to_merge()
    np.testing.assert_allclose(out["enc.0.q"].delta().numpy(), _rethought(merge["enc.0.q"], lam[:2].numpy()), atol=1e-6)
    np.testing.assert_allclose(out["enc.0.v"].delta().numpy(), _rethought(merge["enc.0.v"], lam[2:].numpy()), atol=1e-6)
    np.testing.assert_allclose(src.effective().detach().numpy(), [[1.25], [0.75]], rtol=1e-6)
    t = src.tensors()
    assert torch.equal(t["scale::enc.0.v"], lam[2:])
    sv = np.linalg.svd(merge["enc.0.v"].delta().numpy(), compute_uv=False)
    np.testing.assert_allclose(t["sigma::enc.0.v"].numpy(), sv[:3], rtol=1e-5)


def test_lora_term_is_the_rethought_delta_applied_to_hidden_states():
    merge = _merge()
    src = SpectralCoefs(merge, list(merge))
    lam = torch.tensor([0.5, 2.0, -1.0, 3.0, 0.25])
    with torch.no_grad():
        src.gamma.copy_(lam)
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(7))  # (batch, tokens, in)
    layer = SimpleNamespace(name="enc.0.v", index=1, B_cat=torch.zeros(4, 9))
    ref = x.double().numpy() @ _rethought(merge["enc.0.v"], lam[2:].numpy()).T
    np.testing.assert_allclose(src.lora_term(layer, x).detach().numpy(), ref, atol=1e-5)


def test_lora_term_of_a_module_outside_the_spectral_set_is_zero():
    merge = _merge()
    src = SpectralCoefs({"enc.0.q": merge["enc.0.q"]}, ["enc.0.q"])
    x = torch.randn(2, 3, 5).bfloat16()  # (batch, tokens, in) under mixed precision
    layer = SimpleNamespace(name="enc.0.v", index=1, B_cat=torch.zeros(4, 9))  # out 4, R 9 concatenated ranks
    term = src.lora_term(layer, x)
    assert term.shape == (2, 3, 4) and term.dtype == torch.bfloat16 and term.device == x.device
    assert not term.any()


def test_singular_vectors_gains_and_zero_terms_live_on_the_model_device():
    """'meta' stands in for a GPU on CPU-only machines."""
    merge = _merge()
    src = SpectralCoefs(merge, list(merge), device="meta")
    assert src.gamma.device.type == "meta" and src.gamma.shape == (5,)
    assert all(d[name].device.type == "meta" for d in (src.U, src.S, src.Vt) for name in merge)
    x = torch.empty(2, 3, 5, device="meta")
    assert src.lora_term(SimpleNamespace(name="enc.1.q", index=2, B_cat=torch.zeros(4, 9)), x).device.type == "meta"
