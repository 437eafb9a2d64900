"""Static merges: every method against its dense definition (float64) or against PEFT's
``merge_utils`` on the same dense deltas; invariances and edge cases. Tiny random factors only."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from peft.utils import merge_utils as pm

from mergecore.adapters import Adapter, AdapterSet, LoraFactors
from mergecore.errors import MergecoreError
from mergecore.merges import METHODS, get_method, merge_adapters, parse_params
from mergecore.merges.base import dense_deltas
from mergecore.merges.core_methods import IsoParams, KnotsParams, TsvParams, iso_c, knots, tsv_m
from mergecore.merges.osrm import OsrmParams, osrm
from mergecore.merges.pico import PicoParams, pico
from mergecore.merges.ties_dare import (DareParams, DareTiesParams, MagnitudeParams, TiesParams, dare_linear,
                                        dare_ties, magnitude_prune, ties)

OUT, IN, RANKS = 12, 10, (2, 3, 4)
W = [0.7, -0.4, 1.3]
RTOL = 1e-9  # numerical rank of dense float64 references


def make_factors(seed: int = 0, ranks=RANKS) -> list[LoraFactors]:
    g = torch.Generator().manual_seed(seed)
    return [LoraFactors(A=torch.randn(r, IN, generator=g), B=torch.randn(OUT, r, generator=g),
                        scale=float(0.5 + k)) for k, r in enumerate(ranks)]


def make_features(seed: int = 1, n: int = 20, K: int = 3) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, IN, generator=g) @ torch.randn(IN, IN, generator=g) for k in range(K)}


def deltas64(factors) -> list[torch.Tensor]:
    return [torch.zeros(OUT, IN, dtype=torch.float64) if f is None else f.delta() for f in factors]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / max(float(torch.linalg.norm(b.double())), 1e-30))


def run(name, factors, weights=None, params=None, **kw):
    m = get_method(name)
    params = m.params_cls() if params is None else params
    w = m.default_weights(len(factors), params) if weights is None else weights
    if m.needs_features:
        kw.setdefault("features", make_features(K=len(factors)))
    return m.fn(factors, w, params, **kw)


def svd_r(D: torch.Tensor):
    """Thin SVD of a dense float64 matrix truncated to its numerical rank."""
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    r = int((S > RTOL * S[0]).sum()) if S[0] > 0 else 0
    return U[:, :r], S[:r], Vh[:r]


def polar(X):
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


# ----------------------------------------------------------------------------- LoRA-factor space


def test_task_arithmetic_equals_dense_sum():
    f = make_factors()
    ref = sum(w * d for w, d in zip(W, deltas64(f)))
    out = run("task_arithmetic", f, W)
    assert out.is_factored and out.space == "lora-factors" and out.rank == sum(RANKS)
    assert rel(out.delta(), ref) <= 1e-5
    assert rel(run("task_arithmetic", f).delta(), 0.3 * sum(deltas64(f))) <= 1e-5
    assert rel(run("uniform", f).delta(), sum(deltas64(f)) / 3) <= 1e-5
    assert rel(run("concat", f).delta(), sum(deltas64(f))) <= 1e-5


# ----------------------------------------------------------------------------- dense, against PEFT


def test_ties_and_magnitude_equal_peft():
    f = make_factors()
    d = list(dense_deltas(f))  # the same float32 dense deltas PEFT gets
    wt = torch.tensor(W)
    for dens in (0.2, 0.5):
        for sm in ("total", "frequency"):
            ours = run("ties", f, W, TiesParams(density=dens, majority_sign_method=sm)).dense
            assert torch.allclose(ours, pm.ties(d, wt, dens, sm), atol=1e-6, rtol=1e-6)
        ours = run("magnitude_prune", f, W, MagnitudeParams(density=dens)).dense
        assert torch.allclose(ours, pm.magnitude_prune(d, wt, dens), atol=1e-6, rtol=1e-6)


def test_dare_equals_peft_with_same_masks():
    """PEFT draws its masks from the global RNG (one torch.bernoulli per task, in order); ours from
    a torch.Generator. Seeding the global RNG with the same seed gives the same masks, so this
    compares the whole DARE / DARE-TIES pipeline, masks included, on the same dense deltas."""
    f = make_factors()
    d = list(dense_deltas(f))
    wt = torch.tensor(W)
    for seed in (0, 7):
        torch.manual_seed(seed)
        ref = pm.dare_linear(d, wt, 0.3)
        ours = run("dare_linear", f, W, DareParams(density=0.3, seed=seed)).dense
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-6)
        torch.manual_seed(seed)
        ref = pm.dare_ties(d, wt, 0.3, "total")
        ours = run("dare_ties", f, W, DareTiesParams(density=0.3, seed=seed)).dense
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-6)
    a = run("dare_linear", f, W, DareParams(seed=3)).dense
    assert torch.equal(a, run("dare_linear", f, W, DareParams(seed=3)).dense)  # seeded: reproducible
    assert not torch.equal(a, run("dare_linear", f, W, DareParams(seed=4)).dense)


# ----------------------------------------------------------------------------- core space vs dense float64


def knots_dense(f, weights, merge, density=0.2):
    D = deltas64(f)
    U, S, Vh = svd_r(torch.cat(D, dim=1))  # (out, K in) = U S [V_1 ... V_K]
    reps = list(Vh.reshape(len(S), len(D), IN).transpose(0, 1))  # K x (q, in)
    wt = torch.tensor(weights, dtype=torch.float64)
    Vm = pm.task_arithmetic(reps, wt) if merge == "ta" else pm.ties(reps, wt, density, "total")
    return (U * S) @ Vm, S


def test_knots_equals_dense_definition():
    f = make_factors()
    for merge in ("ta", "ties"):
        out = run("knots", f, W, KnotsParams(merge=merge))
        ref, S = knots_dense(f, W, merge)
        assert out.space == "core"
        assert rel(out.delta(), ref) <= 1e-8
        assert torch.allclose(torch.tensor(out.info["singular_values"], dtype=torch.float64), S, rtol=1e-8)
    # KnOTS-TA is plain task arithmetic
    assert rel(run("knots", f, W, KnotsParams(merge="ta")).delta(), sum(w * d for w, d in zip(W, deltas64(f)))) <= 1e-8


def tsv_dense(f, weights, fraction=None):
    D = deltas64(f)
    frac = 1 / len(D) if fraction is None else fraction
    Us, Ss, Vs = [], [], []
    for k, (d, fk) in enumerate(zip(D, f)):
        U, S, Vh = svd_r(d)
        n = min(math.ceil(frac * (0 if fk is None else fk.rank) - 1e-9), len(S))
        Us.append(U[:, :n]), Ss.append(weights[k] * S[:n]), Vs.append(Vh[:n].T)
    return (polar(torch.cat(Us, 1)) * torch.cat(Ss)) @ polar(torch.cat(Vs, 1)).T


def iso_dense(f, weights, alpha=1.0):
    U, S, Vh = svd_r(sum(w * d for w, d in zip(weights, deltas64(f))))
    return alpha * S.mean() * U @ Vh, S


def test_tsv_m_equals_dense_definition():
    f = make_factors()
    for frac in (None, 0.5, 1.0):
        out = run("tsv_m", f, W, TsvParams(fraction=frac))
        ref = tsv_dense(f, W, frac)
        assert rel(out.delta(), ref) <= 1e-8
        S_ref = torch.linalg.svdvals(ref)
        S = torch.tensor(out.info["singular_values"], dtype=torch.float64)
        assert torch.allclose(S, S_ref[: len(S)], rtol=1e-8) and out.rank == int((S_ref > 1e-9 * S_ref[0]).sum())
    assert run("tsv_m", f).info["kept"] == [1, 1, 2]  # ceil(r_k / 3)


def test_iso_c_equals_dense_definition():
    f = make_factors()
    out = run("iso_c", f, W, IsoParams(alpha=1.5))
    ref, S = iso_dense(f, W, 1.5)
    assert rel(out.delta(), ref) <= 1e-8
    sv = torch.tensor(out.info["singular_values"], dtype=torch.float64)
    assert len(sv) == len(S) == sum(RANKS)  # rank of the sum, not min(out, in)
    assert torch.allclose(sv, torch.full_like(sv, 1.5 * float(S.mean())), rtol=1e-8)  # flat spectrum


def pico_dense(f, weights, base, strength=1.0):
    """Dense Pico: column-space projectors of the dense deltas, D = I + E (max(c,1)^-s - 1) E^T."""
    D = deltas64(f)
    Ps = [svd_r(d)[0] for d in D]
    E, sv, _ = torch.linalg.svd(torch.cat(Ps, 1), full_matrices=False)
    Dm = torch.eye(OUT, dtype=torch.float64) + (E * (sv**2).clamp(min=1) ** -strength - E) @ E.T
    cal = [Dm @ d for d in D]
    if base == "ta":
        raw, merged = (sum(w * d for w, d in zip(weights, x)) for x in (D, cal))
    else:  # ties on float64 dense deltas
        wt = torch.tensor(weights, dtype=torch.float64)
        raw, merged = pm.ties(D, wt, 0.2, "total"), pm.ties(cal, wt, 0.2, "total")
    return merged * torch.linalg.norm(raw) / torch.linalg.norm(merged), Dm


def test_pico_equals_dense_definition():
    f = make_factors()
    ref, _ = pico_dense(f, W, "ta")
    out = run("pico", f, W, PicoParams(base_method="ta"))
    assert out.space == "core" and rel(out.delta(), ref) <= 1e-8
    ref, _ = pico_dense(f, W, "ties")
    out = run("pico", f, W, PicoParams(base_method="ties"))
    assert out.space == "dense" and rel(out.delta(), ref) <= 1e-5  # float32 dense TIES
    # TSV-M / Iso-C on calibrated tasks, norm of the uncalibrated merge
    for base, fn_dense in (("tsv_m", tsv_dense), ("iso_c", lambda g, w: iso_dense(g, w)[0])):
        out = run("pico", f, W, PicoParams(base_method=base))
        assert math.isclose(float(torch.linalg.norm(out.delta())), float(torch.linalg.norm(fn_dense(f, W))), rel_tol=1e-8)


def test_pico_downscales_shared_direction():
    """Three tasks writing to one common output direction: it gets sharing count ~3 and, relative to
    the task-specific directions, is scaled by 1/3 before merging."""
    g = torch.Generator().manual_seed(5)
    common = torch.randn(OUT, 1, generator=g)
    f = [LoraFactors(A=torch.randn(2, IN, generator=g), B=torch.cat([common, torch.randn(OUT, 1, generator=g)], 1), scale=1.0)
         for _ in range(3)]
    out = run("pico", f, [1.0] * 3, PicoParams(base_method="ta"))
    assert max(out.info["sharing"]) == pytest.approx(3.0, rel=1e-8)
    _, Dm = pico_dense(f, [1.0] * 3, "ta")
    u = (common.double() / torch.linalg.norm(common.double())).squeeze()
    assert float(u @ Dm @ u) == pytest.approx(1 / 3, rel=1e-8)
    assert rel(out.delta(), pico_dense(f, [1.0] * 3, "ta")[0]) <= 1e-8


# ----------------------------------------------------------------------------- OSRM


def osrm_dense(f, weights, feats):
    out = 0
    for k, fk in enumerate(f):
        H = torch.cat([feats[j].double() for j in feats if j != k])
        _, E = torch.linalg.eigh(H.T @ H / (H.shape[0] - 1))
        A = E[:, : fk.rank].T  # r smallest eigenvectors (Eq. 3)
        Hk = feats[k].double()
        B = fk.delta() @ Hk.T @ torch.linalg.pinv(A @ Hk.T)  # least squares on own features
        out = out + weights[k] * B @ A
    return out


def test_osrm_equals_dense_definition_and_reports_error():
    f, feats = make_factors(), make_features()
    out = run("osrm", f, W, features=feats)
    assert out.space == "lora-factors" and rel(out.delta(), osrm_dense(f, W, feats)) <= 1e-7
    for k, fk in enumerate(f):
        H = torch.cat([feats[j] for j in feats if j != k]).double()
        Ak = out.A[sum(RANKS[:k]): sum(RANKS[: k + 1])]
        Bk = out.B[:, sum(RANKS[:k]): sum(RANKS[: k + 1])] / W[k]
        assert torch.allclose(Ak @ Ak.T, torch.eye(fk.rank, dtype=torch.float64), atol=1e-10)
        assert out.info["rel_err"][k] == pytest.approx(rel(Bk @ Ak, fk.delta()), rel=1e-6)
    frob = run("osrm", f, W, OsrmParams(fit_on_features=False), features=feats)
    assert all(frob.info["rel_err"][k] <= out.info["rel_err"][k] + 1e-9 for k in range(3))  # Frobenius-optimal B


def test_osrm_degenerate_null_space_is_deterministic_and_orthogonal():
    """Fewer examples than dimensions: A' lies in the other tasks' null space, and among those
    choices the one that best keeps the delta (never worse than an arbitrary eigh pick)."""
    f, feats = make_factors(), make_features(n=2)  # other tasks: 4 rows in 10 dims
    out = run("osrm", f, [1.0] * 3, OsrmParams(fit_on_features=False), features=feats)
    for k, fk in enumerate(f):
        sl = slice(sum(RANKS[:k]), sum(RANKS[: k + 1]))
        H = torch.cat([feats[j] for j in feats if j != k]).double()
        assert float(torch.linalg.norm(out.A[sl] @ H.T)) <= 1e-8 * float(torch.linalg.norm(H))
        _, E = torch.linalg.eigh(H.T @ H)
        A0 = E[:, : fk.rank].T
        assert out.info["rel_err"][k] <= rel(fk.delta() @ A0.T @ A0, fk.delta()) + 1e-9
    again = run("osrm", f, [1.0] * 3, OsrmParams(fit_on_features=False), features=feats)
    assert torch.equal(out.A, again.A)


def test_osrm_needs_features():
    f = make_factors()
    with pytest.raises(MergecoreError, match="features"):
        get_method("osrm").fn(f, W, OsrmParams(), features={})
    with pytest.raises(MergecoreError, match="other than"):
        get_method("osrm").fn(f, W, OsrmParams(), features={0: torch.randn(5, IN)})
    with pytest.raises(MergecoreError, match="features"):
        merge_adapters(adapter_set(), "osrm")


# ----------------------------------------------------------------------------- invariances and edge cases

IDENTITY_CASES = [  # (method, params) where one adapter with weight 1 must come back unchanged
    ("task_arithmetic", None), ("uniform", None), ("concat", None),
    ("ties", TiesParams(density=1.0)), ("dare_linear", DareParams(density=1.0)),
    ("dare_ties", DareTiesParams(density=1.0)), ("magnitude_prune", MagnitudeParams(density=1.0)),
    ("knots", KnotsParams(merge="ta")), ("knots", KnotsParams(density=1.0)), ("tsv_m", None),
    ("pico", PicoParams(base_method="ta")), ("pico", PicoParams(base_method="tsv_m")),
    ("pico", PicoParams(base_method="ties", density=1.0)),
]


@pytest.mark.parametrize("name,params", IDENTITY_CASES)
def test_single_adapter_weight_one_is_identity(name, params):
    f = make_factors(ranks=(3,))
    assert rel(run(name, f, [1.0], params).delta(), f[0].delta()) <= 1e-5


ORDER_FREE = [n for n in METHODS if not n.startswith("dare")]  # DARE: masks are drawn per task in order


@pytest.mark.parametrize("name", ORDER_FREE)
def test_adapter_order_does_not_matter(name):
    f, feats = make_factors(), make_features()
    perm = [2, 0, 1]
    a = run(name, f, W, features=feats) if get_method(name).needs_features else run(name, f, W)
    fp, wp = [f[i] for i in perm], [W[i] for i in perm]
    kw = {"features": {new: feats[old] for new, old in enumerate(perm)}} if get_method(name).needs_features else {}
    b = run(name, fp, wp, **kw)
    tol = 1e-5 if a.space != "core" else 1e-8
    assert rel(b.delta(), a.delta()) <= tol


def zero_like(fk: LoraFactors) -> LoraFactors:
    return LoraFactors(A=fk.A, B=torch.zeros_like(fk.B), scale=fk.scale)


@pytest.mark.parametrize("name", list(METHODS))
def test_zero_and_identical_adapters_give_finite_results(name):
    f = make_factors()
    for case in ([zero_like(x) for x in f], [f[1]] * 3, [f[0], zero_like(f[1]), f[2]]):
        out = run(name, case)
        assert torch.isfinite(out.delta()).all()
        if all(x.B.abs().sum() == 0 for x in case):
            assert float(out.delta().abs().max()) == 0.0


@pytest.mark.parametrize("name", list(METHODS))
def test_absent_adapter_acts_as_zero_delta(name):
    f = make_factors()
    absent = run(name, [f[0], None, f[2]], W)
    zero = run(name, [f[0], zero_like(f[1]), f[2]], W)
    assert rel(absent.delta(), zero.delta()) <= 1e-6


@pytest.mark.parametrize("name", list(METHODS))
def test_all_absent_module_is_refused(name):
    with pytest.raises(MergecoreError, match="no adapter targets"):
        run(name, [None, None, None])


# ----------------------------------------------------------------------------- driver, registry, params


def adapter_set() -> AdapterSet:
    f, g = make_factors(0), make_factors(1)
    mods = [{"layer.0.q": f[k], "layer.1.q": g[k]} for k in range(3)]
    del mods[1]["layer.1.q"]  # adapter 1 does not target layer.1.q
    cfg = {"base_model_name_or_path": "tiny"}
    return AdapterSet(tuple(Adapter(f"a{k}", "mem", cfg, m) for k, m in enumerate(mods)))


def test_merge_adapters_runs_every_module():
    s = adapter_set()
    out = merge_adapters(s, "task_arithmetic", weights=W)
    assert list(out) == ["layer.0.q", "layer.1.q"]
    for m in s.modules:
        ref = sum(w * (0 if x is None else x.delta()) for w, x in zip(W, s.factors(m)))
        assert rel(out[m].delta(), ref) <= 1e-5
    feats = {m: make_features() for m in s.modules}
    assert set(merge_adapters(s, "osrm", features=feats)) == set(s.modules)
    d1 = merge_adapters(s, "dare_ties", parse_params("dare_ties", ["seed=5"]))
    d2 = merge_adapters(s, "dare_ties", parse_params("dare_ties", ["seed=5"]))
    assert all(torch.equal(d1[m].dense, d2[m].dense) for m in s.modules)
    with pytest.raises(MergecoreError, match="2 weights for 3 adapters"):
        merge_adapters(s, "ties", weights=[1.0, 1.0])


def test_registry_and_param_errors():
    with pytest.raises(MergecoreError) as e:
        get_method("fisher")
    assert "task_arithmetic" in str(e.value) and "tsv_m" in str(e.value) and "\n" not in str(e.value)
    assert get_method("TSV-M").name == "tsv_m"
    with pytest.raises(MergecoreError) as e:
        parse_params("ties", ["density=0.3", "topk=20"])
    assert "density" in str(e.value) and "majority_sign_method" in str(e.value)
    with pytest.raises(MergecoreError, match="expects float"):
        parse_params("ties", ["density=abc"])
    with pytest.raises(MergecoreError, match="key=value"):
        parse_params("ties", ["density"])
    with pytest.raises(MergecoreError, match="density"):
        parse_params("ties", ["density=1.5"])
    with pytest.raises(MergecoreError, match="base_method"):
        parse_params("pico", ["base_method=fisher"])
    p = parse_params("pico", ["base_method=tsv_m", "fraction=none", "lam=0.5"])
    assert (p.base_method, p.fraction, p.lam) == ("tsv_m", None, 0.5)
    assert parse_params("dare_linear", ["rescale=false", "seed=3"]) == DareParams(rescale=False, seed=3)


def test_every_param_is_documented_and_defaults_build():
    for m in METHODS.values():
        p = m.params_cls()
        assert dataclasses.is_dataclass(p) and m.space in ("lora-factors", "core", "dense")
        assert all(h for h in m.param_help().values()), m.name
        assert len(m.default_weights(3, p)) == 3
    assert TiesParams() == TiesParams(density=0.2, majority_sign_method="total", lam=1.0)
    assert get_method("task_arithmetic").default_weights(2, parse_params("task_arithmetic", [])) == [0.3, 0.3]


@pytest.mark.parametrize("value,ok", [(0.0, False), (1e-6, True), (1.0, True), (1.000001, False)])
def test_density_and_fraction_bounds_are_half_open(value, ok):
    """density (TIES / DARE / KnOTS) and TSV-M's fraction live in (0, 1]: 0 keeps nothing and is refused."""
    from mergecore.merges.base import check_density

    params = get_method("tsv_m").params_cls
    if ok:
        check_density("ties", value)
        params(fraction=value)
    else:
        with pytest.raises(MergecoreError, match=r"must be in \(0, 1\]"):
            check_density("ties", value)
        with pytest.raises(MergecoreError, match=r"fraction must be in \(0, 1\]"):
            params(fraction=value)
