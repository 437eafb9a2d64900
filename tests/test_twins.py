"""The numeric twins merged (issue 26, part 5), each checked against a reference computed here:
one downsampler (``runs.follow.thin_index``, one default for the live view and the Compare page), one
calibration (the learner's periodic evaluation is ``analysis.calibration``), one retained energy
(``analysis.spectra.energy_at_rank``, the spectra lens and the compressed export), one hub probe
(``data.hub``, for base models and GLUE)."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import pytest
import torch

from mergecore.analysis.calibration import confidence_summary, confidently_wrong_share, reliability_bins
from mergecore.analysis.spectra import energy_at_rank
from mergecore.data import hub
from mergecore.export import peft
from mergecore.export.peft import compress
from mergecore.merges.base import ModuleMerge
from mergecore.runs import compare
from mergecore.runs.follow import MAX_POINTS, thin, thin_index

# ----------------------------------------------------------------------------- one downsampler


def reference_index(n: int, m: int) -> list[int]:
    """round(i (n - 1) / (m - 1)) for i < m, repeats dropped; everything when n <= m."""
    if n <= m:
        return list(range(n))
    return sorted({int(np.round(i * (n - 1) / (m - 1))) for i in range(m)})


@pytest.mark.parametrize("n,m", [(0, 5), (1, 5), (5, 5), (6, 5), (401, 400), (10_000, 400), (7, 2), (2001, 500)])
def test_thin_index_against_the_formula(n, m):
    idx = thin_index(n, m)
    assert idx.tolist() == reference_index(n, m)
    if n:
        assert idx[0] == 0 and idx[-1] == n - 1 and len(idx) == min(n, m)


def test_thin_keeps_pairs_together_and_the_default_is_max_points():
    x = np.arange(3, 3 + 1234)
    tx, ty = thin(x, np.sqrt(x))
    assert tx.tolist() == [int(x[i]) for i in reference_index(1234, MAX_POINTS)]
    np.testing.assert_array_equal(ty, np.sqrt(tx.astype(float)))
    assert thin_index(MAX_POINTS + 1).size == MAX_POINTS and thin_index(MAX_POINTS).size == MAX_POINTS
    short = thin([10, 20, 30, 40, 50], [1, 2, 3, 4, 5], max_points=3)
    assert short[0].tolist() == [10, 30, 50] and short[1].tolist() == [1.0, 3.0, 5.0]
    assert short[1].dtype == np.float64  # integer values come back as floats (NaN gaps stay possible)


def test_a_long_run_is_thinned_to_the_reference_steps():
    """One downsampler: the live charts (and Compare, which draws the same RunSeries) keep these steps."""
    n = MAX_POINTS + 37
    want = [k + 1 for k in reference_index(n, MAX_POINTS)]
    live, loss = thin(list(range(1, n + 1)), [1.0 / k for k in range(1, n + 1)])  # what the live charts draw
    assert live.tolist() == want and loss.tolist() == [1.0 / k for k in want]
    assert not hasattr(compare, "thin_index") and not hasattr(compare, "MAX_POINTS")  # one home: runs.follow


# ----------------------------------------------------------------------------- one calibration

EDGE = float(torch.tensor(0.9, dtype=torch.float32))  # 0.8999999761581421, float32's 0.9


def test_float32_edge_is_confident_at_either_dtype():
    """float32 0.9 counts as >= 0.9 whether it comes as float32 (the learner) or float64 (a lens that took
    .double() of float32 probabilities), as the reliability bins put it in the top bin."""
    wrong = torch.tensor([False])
    for dtype in (torch.float32, torch.float64):
        assert confidently_wrong_share(torch.tensor([EDGE], dtype=dtype), wrong) == 1.0
    assert reliability_bins(torch.tensor([EDGE]), ~wrong).count.tolist()[-1] == 1
    below = float(np.nextafter(np.float32(EDGE), np.float32(0)))  # the float32 just below
    assert confidently_wrong_share(torch.tensor([below], dtype=torch.float64), wrong) == 0.0
    assert confidently_wrong_share(torch.tensor([0.95]), wrong, threshold=0.96) == 0.0


def reference_ece(conf: np.ndarray, ok: np.ndarray, n_bins: int) -> float:
    """sum over bins of |accuracy - mean confidence| x the bin's share; bins [b/n, (b+1)/n), 1.0 in the last."""
    conf = conf.astype(np.float64)
    b = np.minimum(np.floor(conf * n_bins + 1e-6).astype(int), n_bins - 1)
    return float(sum(abs(ok[b == i].mean() - conf[b == i].mean()) * (b == i).mean()
                     for i in range(n_bins) if (b == i).any()))


def test_confidence_summary_against_numpy():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(3 * torch.randn(50, 4, generator=g), -1)
    probs[0] = torch.tensor([EDGE, 0.05, 0.03, 0.02])  # an edge row, wrong below
    labels = torch.randint(0, 4, (50,), generator=g)
    unsure = probs.max(-1).values < 0.7
    labels[unsure] = probs.argmax(-1)[unsure]  # under-confident low bins, over-confident high ones: ECE needs bins
    labels[0] = 1
    expert = torch.softmax(torch.randn(50, 4, generator=g), -1)
    p, y, e = probs.numpy(), labels.numpy(), expert.numpy()
    conf, pred = p.max(1), p.argmax(1)
    got = confidence_summary(probs, labels, expert)
    assert got["mean_confidence"] == pytest.approx(conf.astype(np.float64).mean(), rel=1e-12)
    assert got["accuracy"] == pytest.approx((pred == y).mean(), rel=1e-12)
    assert got["confidently_wrong"] == pytest.approx(((conf >= np.float32(0.9)) & (pred != y)).mean(), rel=1e-12)
    assert got["agreement"] == pytest.approx((pred == e.argmax(1)).mean(), rel=1e-12)
    assert got["ece"] == pytest.approx(reference_ece(conf, pred == y, 10), rel=1e-9)
    other = confidence_summary(probs, labels, expert, threshold=0.5, n_bins=4)
    assert other["ece"] == pytest.approx(reference_ece(conf, pred == y, 4), rel=1e-9)
    assert other["confidently_wrong"] == pytest.approx(((conf >= np.float32(0.5)) & (pred != y)).mean(), rel=1e-12)
    never_wrong = torch.ones(50, dtype=torch.bool)  # the learner's regression rows; labels not read
    regression = confidence_summary(probs, None, expert, correct=never_wrong)
    assert regression["confidently_wrong"] == 0.0 and regression["accuracy"] == 1.0
    assert regression["mean_confidence"] == got["mean_confidence"] and regression["agreement"] == got["agreement"]
    empty = confidence_summary(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3))
    assert all(math.isnan(empty[k]) for k in ("mean_confidence", "accuracy", "confidently_wrong", "agreement"))


# ----------------------------------------------------------------------------- one retained energy


def reference_energy(s: np.ndarray, r: int) -> float:
    s2 = np.sort(np.abs(s.astype(np.float64)))[::-1] ** 2
    return 1.0 if s2.sum() == 0 else float(s2[: max(r, 0)].sum() / s2.sum())


@pytest.mark.parametrize("r", [-1, 0, 1, 2, 5, 6, 50])
def test_energy_at_rank_against_numpy(r):
    s = np.abs(np.random.default_rng(r + 2).normal(size=5)) * 3
    s[::2] *= 0.1  # not sorted
    assert energy_at_rank(torch.tensor(s), r) == pytest.approx(reference_energy(s, r), rel=1e-12, abs=0)
    tiny = s * 1e-3  # total energy below 1: still a share, not the zero-spectrum 1.0
    assert energy_at_rank(torch.tensor(tiny), r) == pytest.approx(reference_energy(tiny, r), rel=1e-12, abs=0)
    if r <= 0 or r >= 5:  # nothing kept; full rank and beyond: everything
        assert energy_at_rank(torch.tensor(s), r) == pytest.approx(0.0 if r <= 0 else 1.0, abs=1e-15)


def test_zero_spectrum_retains_everything_at_every_rank():
    for r in (0, 1, 3, 10):
        assert energy_at_rank(torch.zeros(3), r) == 1.0
    assert energy_at_rank(torch.zeros(0), 2) == 1.0
    assert energy_at_rank(torch.tensor([0.0, 2.0]), 2) == 1.0 and energy_at_rank(torch.tensor([0.0, 2.0]), 9) == 1.0


def test_export_reports_the_spectra_convention():
    """The compressed export's per-module report is energy_at_rank of the module's singular values (dense SVD)."""
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(6, 5, generator=g, dtype=torch.float64)
    merge = {"d": ModuleMerge("dense", dense=dense.float()), "z": ModuleMerge("dense", dense=torch.zeros(3, 3)),
             "f": ModuleMerge("lora-factors", B=torch.randn(6, 2, generator=g), A=torch.randn(2, 5, generator=g))}
    _, report = compress(merge, 2)
    for name, m in merge.items():
        s = np.linalg.svd(m.delta().double().numpy(), compute_uv=False)
        assert report["per_module"][name] == pytest.approx(reference_energy(s, 2), rel=1e-6)
    assert report["per_module"]["z"] == 1.0 and report["per_module"]["f"] == pytest.approx(1.0)
    assert not hasattr(peft, "retained_energy")  # one home: analysis.spectra


# ----------------------------------------------------------------------------- one hub probe


class Connections:
    """socket.create_connection recorded: (address, timeout) per call; refuses, accepts or hangs."""

    def __init__(self, how: str = "accept"):
        self.calls, self.how = [], how

    def __call__(self, address, timeout=None):
        self.calls.append((address, timeout))
        if self.how == "refuse":
            raise ConnectionRefusedError(address)
        if self.how == "hang":
            time.sleep(timeout + 2.0)
        if self.how == "slow":  # answers within the timeout, after the probe has started waiting
            time.sleep(timeout / 2)
        return contextlib.nullcontext()


@pytest.fixture
def probe(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    conn = Connections()
    monkeypatch.setattr(hub.socket, "create_connection", conn)
    return conn


@pytest.mark.parametrize("env,address", [
    ({}, ("huggingface.co", 443)),  # the default endpoint, https
    ({"HF_ENDPOINT": "http://mirror.local"}, ("mirror.local", 80)),
    ({"HF_ENDPOINT": "https://mirror.local:8443"}, ("mirror.local", 8443)),
    ({"HF_ENDPOINT": "mirror.local:3128"}, ("mirror.local", 3128)),  # no scheme: read as http://
    ({"HF_ENDPOINT": "http://mirror.local", "https_proxy": "http://proxy.lower:81"}, ("proxy.lower", 81)),
    ({"https_proxy": "http://proxy.lower:81", "HTTPS_PROXY": "http://proxy.upper:82"}, ("proxy.upper", 82)),
])
def test_hub_probe_asks_the_proxy_else_the_endpoint(probe, monkeypatch, env, address):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert hub.hub_reachable(timeout=0.25)
    assert probe.calls == [(address, 0.25)]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a refusal is an answer
def test_hub_probe_refusals(probe, monkeypatch):
    probe.how = "refuse"
    assert not hub.hub_reachable() and probe.calls == [(("huggingface.co", 443), 2.0)]  # 2 s by default
    probe.how = "accept"
    monkeypatch.setenv("HF_ENDPOINT", "http://")  # no host: nothing to ask
    assert not hub.hub_reachable() and len(probe.calls) == 1
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local")
    for flag in (" TRUE ", "yes", "On", "1"):
        monkeypatch.setenv("HF_HUB_OFFLINE", flag)
        assert not hub.hub_reachable()
    assert len(probe.calls) == 1  # offline: no connection tried
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.hub_reachable() and len(probe.calls) == 2


def test_hub_probe_gives_up_on_a_hanging_lookup(probe):
    probe.how = "hang"
    t0 = time.perf_counter()
    assert not hub.hub_reachable(timeout=0.2)
    assert time.perf_counter() - t0 < 1.0  # timeout + 0.5 s, not the 2.2 s the lookup hangs
    probe.how = "slow"
    assert hub.hub_reachable(timeout=0.4)  # waited for: an answer within the timeout counts
