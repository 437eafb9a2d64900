"""Analysis lenses: each checked against a dense or library recomputation, or a hand example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import spearmanr

from mergecore.adapters import LoraFactors
from mergecore.analysis import (
    a_overlap_matrix,
    agreement,
    b_overlap_matrix,
    confidence_summary,
    confidently_wrong_share,
    divergence_matrix,
    effective_rank,
    energy_at_rank,
    expected_calibration_error,
    lora_singular_values,
    mean_representation_bias,
    module_spectra,
    osrm_interference,
    osrm_interference_matrix,
    principal_angles,
    reliability_bins,
    representation_bias,
    shared_output_directions,
    spearman_with_scores,
    stability,
    subspace_overlap,
    task_vector_cosine,
)
from mergecore.core_space import core_space


def _factors(seed: int, out: int = 12, inn: int = 10, r: int = 3, scale: float = 2.0) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(A=torch.randn(r, inn, generator=g), B=torch.randn(out, r, generator=g), scale=scale)


def _zero(out: int = 12, inn: int = 10, r: int = 3) -> LoraFactors:
    return LoraFactors(A=torch.randn(r, inn), B=torch.zeros(out, r), scale=1.0)


# ----------------------------------------------------------------------------- spectra


def test_lora_singular_values_match_dense_svd():
    for seed, (out, inn, r) in enumerate([(12, 10, 3), (4, 20, 6), (20, 4, 6)]):
        f = _factors(seed, out, inn, r, scale=-0.5)
        s = lora_singular_values(f.B, f.A, f.scale)
        dense = torch.linalg.svdvals(f.delta())
        assert s.dtype == torch.float64
        torch.testing.assert_close(s, dense[: s.shape[0]], rtol=1e-10, atol=1e-10)
        assert torch.all(dense[s.shape[0]:] < 1e-10)


def test_module_spectra_tasks_and_merged_match_dense():
    fs = [_factors(1, r=3), None, _factors(2, r=5, scale=0.5)]
    coefs = [0.3, 1.0, -0.7]
    spec = module_spectra(fs, coefs=coefs)
    assert spec["tasks"][1] is None
    torch.testing.assert_close(spec["tasks"][2], torch.linalg.svdvals(fs[2].delta())[:5])
    dense = 0.3 * fs[0].delta() - 0.7 * fs[2].delta()
    ref = torch.linalg.svdvals(dense)
    n = spec["merged"].shape[0]
    torch.testing.assert_close(spec["merged"], ref[:n], rtol=1e-10, atol=1e-10)
    # a merged core built in the same core space, and a merged LoRA's factors
    cs = core_space(fs)
    core = cs.cores[0] + cs.cores[2]
    spec2 = module_spectra(fs, merged_cores={"ta": core})
    torch.testing.assert_close(spec2["cores"]["ta"], spec2["merged"])
    B, A, _ = cs.to_lora(core)
    m = lora_singular_values(B, A)
    torch.testing.assert_close(m, torch.linalg.svdvals(fs[0].delta() + fs[2].delta())[: m.shape[0]])


def test_energy_and_effective_rank():
    assert effective_rank(3.0 * torch.ones(7)) == pytest.approx(7.0)
    assert effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(4)) == 0.0
    s = torch.tensor([3.0, 4.0, 0.0])
    assert energy_at_rank(s, 1) == pytest.approx(16 / 25)
    assert energy_at_rank(s, 2) == pytest.approx(1.0)
    assert energy_at_rank(torch.zeros(3), 2) == 1.0  # a zero update loses nothing (was 0.0: one convention, export's)


def test_zero_adapter_spectra_are_finite():
    f = _zero()
    s = lora_singular_values(f.B, f.A, f.scale)
    assert torch.all(s == 0)
    assert effective_rank(s) == 0.0 and energy_at_rank(s, 1) == 1.0  # truncating zero loses nothing
    spec = module_spectra([f, _factors(3)])
    assert torch.isfinite(spec["merged"]).all()


# ----------------------------------------------------------------------------- subspaces


@pytest.mark.parametrize("p,q", [(3, 3), (2, 5), (6, 2), (1, 1)])
def test_principal_angles_match_scipy(p, q):
    g = torch.Generator().manual_seed(p * 10 + q)
    X, Y = torch.randn(15, p, generator=g, dtype=torch.float64), torch.randn(15, q, generator=g, dtype=torch.float64)
    ours = principal_angles(X, Y)
    ref = np.sort(scipy.linalg.subspace_angles(X.numpy(), Y.numpy()))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
    assert torch.all(ours[1:] >= ours[:-1])


def test_principal_angles_small_angles_accurate():
    X = torch.eye(8, 3, dtype=torch.float64)
    Y = X.clone()
    Y[5, 0] = 1e-9  # tilt one direction by ~1e-9 rad
    ours = principal_angles(X, Y)
    ref = np.sort(scipy.linalg.subspace_angles(X.numpy(), Y.numpy()))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-15)
    assert ours[-1] == pytest.approx(1e-9, rel=1e-6)


def test_subspace_overlap_self_orthogonal_and_empty():
    X = torch.randn(10, 3, dtype=torch.float64)
    assert subspace_overlap(X, X @ torch.randn(3, 3, dtype=torch.float64)) == pytest.approx(1.0)
    E = torch.eye(10, dtype=torch.float64)
    assert subspace_overlap(E[:, :3], E[:, 3:7]) == pytest.approx(0.0, abs=1e-15)
    assert subspace_overlap(E[:, :2], E[:, :5]) == pytest.approx(1.0)  # contained
    assert subspace_overlap(torch.zeros(10, 3), X) == 0.0
    assert principal_angles(torch.zeros(10, 3), X).shape == (0,)


def test_overlap_matrices_nan_for_absent_and_zero_for_zero_adapter():
    fs = [_factors(1), None, _factors(2), _zero()]
    for M in (b_overlap_matrix(fs), a_overlap_matrix(fs)):
        assert M.shape == (4, 4)
        assert torch.isnan(M[1]).all() and torch.isnan(M[:, 1]).all()
        assert M[0, 0] == pytest.approx(1.0) and M[2, 2] == pytest.approx(1.0)
        assert 0.0 <= M[0, 2] <= 1.0 and M[0, 2] == M[2, 0]
    B = b_overlap_matrix(fs)
    assert B[3, 0] == 0.0 and B[3, 3] == 0.0
    assert a_overlap_matrix(fs)[3, 0] > 0  # A of the zero adapter is random: its row space exists
    expected = float(np.mean(np.cos(scipy.linalg.subspace_angles(fs[0].B.double().numpy(), fs[2].B.double().numpy())) ** 2))
    assert B[0, 2] == pytest.approx(expected, rel=1e-8)


def test_task_vector_cosine_matches_dense():
    fs = [_factors(1, r=2), _factors(2, r=4, scale=-1.5), None, _factors(1, r=2, scale=3.0), _zero()]
    C = task_vector_cosine(fs)
    for i in (0, 1, 3):
        for j in (0, 1, 3):
            a, b = fs[i].delta().flatten(), fs[j].delta().flatten()
            ref = float(a @ b / (a.norm() * b.norm()))
            assert C[i, j] == pytest.approx(ref, abs=1e-12)
    assert C[0, 3] == pytest.approx(1.0)  # same direction, other scale
    assert torch.isnan(C[2]).all() and torch.isnan(C[:, 2]).all()
    assert C[4, 0] == 0.0 and C[4, 4] == 0.0  # zero adapter: no NaN


def test_shared_output_directions_counts_tasks():
    E = torch.eye(6)
    shared = E[:, :1]
    fs = [
        LoraFactors(A=torch.randn(2, 5), B=torch.cat([shared, E[:, 1:2]], 1), scale=1.0),
        LoraFactors(A=torch.randn(2, 5), B=torch.cat([shared, E[:, 2:3]], 1) * 3.0, scale=1.0),
        LoraFactors(A=torch.randn(2, 5), B=torch.cat([shared, E[:, 3:4]], 1), scale=1.0),
        None,
    ]
    dirs, counts = shared_output_directions(fs, threshold=2.0)
    assert dirs.shape == (6, 1)
    torch.testing.assert_close(counts, torch.tensor([3.0], dtype=torch.float64))
    assert abs(float(dirs[0, 0])) == pytest.approx(1.0)
    dirs_all, counts_all = shared_output_directions(fs, threshold=0.5)
    assert counts_all.shape == (4,) and float(counts_all.sum()) == pytest.approx(6.0)  # total rank
    assert shared_output_directions([None, _zero()])[0].shape == (12, 0)


def test_osrm_interference_matches_dense_and_masks_padding():
    f = _factors(4)
    H = torch.randn(7, 10)
    ref = float(torch.linalg.matrix_norm(f.delta() @ H.double().T))
    assert osrm_interference(f.B, f.A, f.scale, H) == pytest.approx(ref, rel=1e-10)
    H3 = torch.randn(2, 4, 10)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    rows = torch.cat([H3[0, :2], H3[1, :3]])
    assert osrm_interference(f.B, f.A, f.scale, H3, mask) == pytest.approx(
        osrm_interference(f.B, f.A, f.scale, rows), rel=1e-12)
    M = osrm_interference_matrix([f, None, _factors(5)], [H, H, None])
    assert M.shape == (3, 3)
    assert M[0, 0] == pytest.approx(ref, rel=1e-10)
    assert torch.isnan(M[:, 1]).all() and torch.isnan(M[2]).all()
    with pytest.raises(ValueError):
        osrm_interference(f.B, f.A, f.scale, H3)


# ----------------------------------------------------------------------------- divergence


def _probs(seed: int, n: int, C: int) -> torch.Tensor:
    return torch.softmax(torch.randn(n, C, generator=torch.Generator().manual_seed(seed)) * 2, -1)


@pytest.mark.parametrize("kind", ["js", "kl"])
def test_divergence_matrix_matches_loop(kind):
    tasks = {"a": (5, 2), "b": (4, 3), "c": (6, 2)}
    names = list(tasks)
    probs = {i: {j: _probs(3 * a + b, *tasks[i]) for b, j in enumerate(names)} for a, i in enumerate(names)}
    D = divergence_matrix(probs, kind=kind)
    assert D.shape == (3, 3) and torch.all(torch.diagonal(D) == 0)
    for a, i in enumerate(names):
        for b, j in enumerate(names):
            if a == b:
                continue
            p, q = probs[i][i].double(), probs[i][j].double()
            vals = []
            for x in range(p.shape[0]):
                kl = lambda u, v: sum(float(u[c] * math.log(u[c] / v[c])) for c in range(u.shape[0]) if u[c] > 0)
                if kind == "kl":
                    vals.append(kl(p[x], q[x]))
                else:
                    m = 0.5 * (p[x] + q[x])
                    vals.append(0.5 * kl(p[x], m) + 0.5 * kl(q[x], m))
            assert D[a, b] == pytest.approx(sum(vals) / len(vals), rel=1e-9)
    assert torch.all(D >= 0)


def test_divergence_matrix_missing_entry_is_nan():
    p = _probs(0, 3, 2)
    D = divergence_matrix({0: {0: p, 1: p}, 1: {1: p}})
    assert D[0, 1] == pytest.approx(0.0, abs=1e-12) and math.isnan(float(D[1, 0]))


def test_spearman_with_scores():
    D = np.array([[0, 1.0, 3.0], [2.0, 0, 5.0], [4.0, 6.0, 0]])
    S = np.array([[0, 10.0, 30.0], [20.0, 0, 50.0], [40.0, 60.0, 0]])
    assert spearman_with_scores(D, S) == pytest.approx(1.0)
    assert spearman_with_scores(torch.tensor(D), -torch.tensor(S)) == pytest.approx(-1.0)
    rows = spearman_with_scores(D, S, per_row=True)
    ref = [spearmanr(D[i], S[i]).statistic for i in range(3)]
    np.testing.assert_allclose(rows, ref)


# ----------------------------------------------------------------------------- representation


def test_representation_bias_self_zero_and_masked_hand_computation():
    torch.manual_seed(0)
    hs = [torch.randn(2, 3, 4) for _ in range(3)]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.all(representation_bias(hs, hs, mask) == 0)
    merged = [h.clone() for h in hs]
    merged[1][0, 0] += torch.tensor([1.0, -1.0, 2.0, 0.0])  # L1 = 4 on a real token
    merged[1][0, 2] += 100.0  # padding: must not count
    bias = representation_bias(merged, hs, mask)
    torch.testing.assert_close(bias, torch.tensor([0.0, 4 / 4 / 3, 0.0], dtype=torch.float64))
    bias_sum = representation_bias(merged, hs, mask, reduction="sum")
    torch.testing.assert_close(bias_sum, torch.tensor([0.0, 4 / 3, 0.0], dtype=torch.float64))
    assert mean_representation_bias(merged, hs, mask) == pytest.approx(1 / 9)
    pooled = representation_bias([torch.ones(2, 4)], [torch.zeros(2, 4)])
    torch.testing.assert_close(pooled, torch.tensor([1.0], dtype=torch.float64))


# ----------------------------------------------------------------------------- calibration


def test_reliability_bins_and_ece_hand_example():
    conf = torch.tensor([0.05, 0.15, 0.95, 1.0, 0.9, 0.55])
    correct = torch.tensor([0, 1, 1, 0, 1, 1])
    bins = reliability_bins(conf, correct, n_bins=10)
    assert bins.edges.shape == (11,)
    assert bins.count.tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 3]
    assert bins.confidence[9] == pytest.approx((0.95 + 1.0 + 0.9) / 3)
    assert bins.accuracy[9] == pytest.approx(2 / 3)
    assert math.isnan(float(bins.accuracy[2]))
    ece_hand = (1 * abs(0 - 0.05) + 1 * abs(1 - 0.15) + 1 * abs(1 - 0.55) + 3 * abs(2 / 3 - 2.85 / 3)) / 6
    assert expected_calibration_error(conf, correct) == pytest.approx(ece_hand)
    assert math.isnan(expected_calibration_error(torch.zeros(0), torch.zeros(0)))


def test_confidently_wrong_agreement_and_summary():
    conf = torch.tensor([0.95, 0.9, 0.5, 0.99])
    correct = torch.tensor([False, True, False, True])
    assert confidently_wrong_share(conf, correct) == pytest.approx(0.25)
    assert agreement(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
    probs = torch.tensor([[0.95, 0.05], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([1, 1, 0, 0])
    expert = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    out = confidence_summary(probs, labels, expert)
    assert out["mean_confidence"] == pytest.approx((0.95 + 0.8 + 0.6 + 0.7) / 4)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["confidently_wrong"] == pytest.approx(0.25)
    assert out["agreement"] == pytest.approx(0.5)
    assert out["ece"] == pytest.approx(expected_calibration_error(probs.max(-1).values, probs.argmax(-1) == labels))
    assert confidence_summary(probs, labels)["agreement"] is None


# ----------------------------------------------------------------------------- stability


def test_stability_hand_sets():
    s = stability(torch.tensor([0.2, 0.2, 0.2]))
    assert s["range"] == pytest.approx(0.0) and s["std"] == pytest.approx(0.0, abs=1e-12) and s["negatives"] == 0
    s = stability(torch.tensor([-1.0, 0.5, 2.0]))
    assert s["range"] == pytest.approx(3.0) and s["negatives"] == 1
    assert s["std"] == pytest.approx(float(np.std([-1.0, 0.5, 2.0])))
    assert (s["min"], s["max"], s["mean"]) == pytest.approx((-1.0, 2.0, 0.5))
    s = stability(torch.tensor([[0.1, -0.2], [0.3, -0.4]]))  # layer-wise (L, K): all entries
    assert s["negatives"] == 2 and s["range"] == pytest.approx(0.7)
    assert math.isnan(stability(torch.zeros(0))["std"])
