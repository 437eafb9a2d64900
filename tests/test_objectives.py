"""Objectives against scipy on random distributions."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as sp_entropy

from mergecore.divergences import cross_entropy, entropy, js_div, kl_div, reverse_kl
from mergecore.learn.objectives import l2_pull


def _dists(n=20, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(n, c, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(n, c, generator=g) * 2, -1)
    return p, q


def test_js_matches_scipy():
    p, q = _dists()
    ours = js_div(p, q.log()).numpy()
    ref = jensenshannon(p.numpy(), q.numpy(), axis=1) ** 2  # scipy returns the distance (sqrt)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_kl_both_directions_and_entropy_match_scipy():
    p, q = _dists(seed=1)
    np.testing.assert_allclose(kl_div(p, q.log()).numpy(), sp_entropy(p.numpy(), q.numpy(), axis=1), rtol=1e-4)
    np.testing.assert_allclose(reverse_kl(p, q.log()).numpy(), sp_entropy(q.numpy(), p.numpy(), axis=1), rtol=1e-4)
    np.testing.assert_allclose(entropy(None, q.log()).numpy(), sp_entropy(q.numpy(), axis=1), rtol=1e-5)


def test_zero_probabilities_are_safe_and_js_bounded():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    logq = torch.log_softmax(torch.log(q.clamp_min(1e-30)), -1)
    js = js_div(p, logq)
    assert torch.isfinite(js).all()
    assert abs(float(js[0]) - np.log(2)) < 1e-5 and abs(float(js[1])) < 1e-6
    assert torch.isfinite(kl_div(q, torch.log_softmax(torch.randn(2, 3), -1))).all()


def test_gradients_are_finite_at_one_hot_experts():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.randn(2, 2, requires_grad=True)
    for fn in (js_div, kl_div, reverse_kl):
        fn(p, torch.log_softmax(logits, -1)).sum().backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


def test_cross_entropy_and_l2():
    logq = torch.log_softmax(torch.randn(4, 3), -1)
    y = torch.tensor([0, 2, 1, 1])
    np.testing.assert_allclose(cross_entropy(y, logq).numpy(), -logq[torch.arange(4), y].numpy())
    g, g0 = torch.tensor([0.5, -0.5]), torch.tensor([0.25, 0.25])
    assert abs(float(l2_pull(g, g0, 2e-4)) - 2e-4 * (0.25 ** 2 + 0.75 ** 2)) < 1e-10


def test_zero_mass_rows_follow_the_0_log_0_convention():
    """An expert with zero mass where the merged model has zero probability (log q = -inf): KL and JS
    are 0 (scipy agrees), never NaN."""
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    logq = torch.log(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))  # -inf where q = 0
    np.testing.assert_allclose(kl_div(p, logq).numpy(), sp_entropy(p.numpy(), p.numpy(), axis=1), atol=1e-7)
    assert torch.isfinite(js_div(p, logq)).all() and float(js_div(p, logq).abs().max()) < 1e-7
    assert torch.isfinite(entropy(None, logq)).all()


def test_unknown_objective_names_the_valid_ones():
    import pytest

    from mergecore.errors import MergecoreError
    from mergecore.learn.objectives import get_objective

    with pytest.raises(MergecoreError) as info:
        get_objective("hinge")
    assert str(info.value) == "unknown objective 'hinge'; valid objectives: js, kl, rkl, entropy, ce"


def test_divergences_reduce_the_last_axis_of_token_level_distributions():
    """Generative tasks pass (n, tokens, buckets) distributions (generative.bucket_divergence); each divergence
    is per token over the last axis, as scipy computes it along axis=-1."""
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(3, 4, 5, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(3, 4, 5, generator=g) * 2, -1)
    pn, qn = p.numpy(), q.numpy()
    np.testing.assert_allclose(kl_div(p, q.log()).numpy(), sp_entropy(pn, qn, axis=-1), rtol=1e-4)
    np.testing.assert_allclose(reverse_kl(p, q.log()).numpy(), sp_entropy(qn, pn, axis=-1), rtol=1e-4)
    np.testing.assert_allclose(entropy(None, q.log()).numpy(), sp_entropy(qn, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(js_div(p, q.log()).numpy(), jensenshannon(pn, qn, axis=-1) ** 2, rtol=1e-4, atol=1e-6)
