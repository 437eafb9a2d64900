"""Static merges, second part: parameter validation and CLI parsing (exact user-facing messages),
boundaries (numerical rank, empty / single / zero tasks, tiny scales, ranks above the layer size),
defaults of the shared helpers and the options not covered in test_merges.py. Every number is
compared with a dense float64 recomputation from the method's formula, or with PEFT's merge_utils."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from peft.utils import merge_utils as pm

from mergecore.adapters import Adapter, AdapterSet, LoraFactors
from mergecore.errors import MergecoreError
from mergecore.merges import METHODS, get_method, merge_adapters, parse_params
from mergecore.merges.base import ModuleMerge, check_weights, dense_deltas, numerical_rank
from mergecore.merges.core_methods import IsoParams, KnotsParams, TsvParams, iso_core, tsv_core, weighted
from mergecore.merges.osrm import OsrmParams, covariance, rel_err
from mergecore.merges.pico import PicoParams, pico_calibrate
from mergecore.merges.task_arithmetic import NoParams
from mergecore.merges.ties_dare import (
    DareParams,
    DareTiesParams,
    MagnitudeParams,
    TiesParams,
    dare_tensors,
    majority_sign_mask,
    ties_tensors,
)

pytestmark = pytest.mark.usefixtures("one_thread")

OUT, IN, RANKS = 12, 10, (2, 3, 4)
W = [0.7, -0.4, 1.3]
F64 = torch.float64


def make_factors(seed: int = 0, ranks=RANKS, out: int = OUT, scale: float = 1.0) -> list[LoraFactors]:
    g = torch.Generator().manual_seed(seed)
    return [LoraFactors(A=torch.randn(r, IN, generator=g), B=torch.randn(out, r, generator=g),
                        scale=scale * (0.5 + k)) for k, r in enumerate(ranks)]


def make_features(seed: int = 1, n: int = 20, K: int = 3) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, IN, generator=g) @ torch.randn(IN, IN, generator=g) for k in range(K)}


def deltas64(factors, out: int = OUT) -> list[torch.Tensor]:
    return [torch.zeros(out, IN, dtype=F64) if f is None else f.delta() for f in factors]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / max(float(torch.linalg.norm(b.double())), 1e-300))


def run(name, factors, weights=None, params=None, **kw):
    m = get_method(name)
    params = m.params_cls() if params is None else params
    w = m.default_weights(len(factors), params) if weights is None else weights
    return m.fn(factors, w, params, **kw)


def svd_r(D: torch.Tensor, rtol: float = 1e-9):
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    r = int((S > rtol * S[0]).sum()) if S.numel() and S[0] > 0 else 0
    return U[:, :r], S[:r], Vh[:r]


def polar(X):
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def tsv_ref(D, ranks, weights, fraction=None, alpha=1.0):
    """TSV-M on dense deltas: top ceil(fraction r_k) directions, concatenations whitened by polar."""
    frac = 1 / len(D) if fraction is None else fraction
    Us, Ss, Vs = [], [], []
    for d, r, w in zip(D, ranks, weights):
        U, S, Vh = svd_r(d)
        n = min(math.ceil(frac * r - 1e-9), len(S))
        Us.append(U[:, :n]), Ss.append(w * S[:n]), Vs.append(Vh[:n].T)
    return alpha * (polar(torch.cat(Us, 1)) * torch.cat(Ss)) @ polar(torch.cat(Vs, 1)).T


def iso_ref(D, weights, alpha=1.0):
    U, S, Vh = svd_r(sum(w * d for w, d in zip(weights, D)))
    return alpha * S.mean() * U @ Vh


def ties_ref(D, weights, density, sign="total"):
    return pm.ties(list(D), torch.tensor(weights, dtype=D[0].dtype), density, sign)


def calibration_ref(D, strength):
    """Pico's D = I + E diag(max(c, 1)^-strength - 1) E^T from the column spaces of the dense deltas."""
    E, sv, _ = torch.linalg.svd(torch.cat([svd_r(d)[0] for d in D], 1), full_matrices=False)
    c = sv**2
    return torch.eye(D[0].shape[0], dtype=F64) + (E * (c.clamp(min=1) ** -strength - 1)) @ E.T, c


def pico_ref(f, weights, base, strength=1.0, density=0.2, sign="total", fraction=None, alpha=1.0, out=OUT):
    D = deltas64(f, out)
    Dm, c = calibration_ref(D, strength)
    cal = [Dm @ d for d in D]
    ranks = [0 if x is None else x.rank for x in f]
    merge = {"ta": lambda X: sum(w * d for w, d in zip(weights, X)),
             "ties": lambda X: ties_ref(X, weights, density, sign),
             "tsv_m": lambda X: tsv_ref(X, ranks, weights, fraction, alpha),
             "iso_c": lambda X: iso_ref(X, weights, alpha)}[base]
    raw, merged = merge(D), merge(cal)
    ratio = float(torch.linalg.norm(raw) / torch.linalg.norm(merged))
    return merged * ratio, ratio, c


def adapter_set() -> AdapterSet:
    f, g = make_factors(0), make_factors(1)
    mods = [{"layer.0.q": f[k], "layer.1.q": g[k]} for k in range(3)]
    del mods[1]["layer.1.q"]
    return AdapterSet(tuple(Adapter(f"a{k}", "mem", {"base_model_name_or_path": "tiny"}, m) for k, m in enumerate(mods)))


# ----------------------------------------------------------------------------- messages a CLI user sees

DENSITY = r"density must be in \(0, 1\] \(fraction of entries kept\), got "
SIGNS = r"majority_sign_method must be one of total, frequency, got 'x'$"


@pytest.mark.parametrize("build,msg", [
    (lambda: TiesParams(density=0.0), "^ties: " + DENSITY + "0.0$"),
    (lambda: TiesParams(majority_sign_method="x"), "^ties: " + SIGNS),
    (lambda: DareParams(density=1.5), "^dare: " + DENSITY + "1.5$"),
    (lambda: DareTiesParams(density=0.0), "^dare_ties: " + DENSITY + "0.0$"),
    (lambda: DareTiesParams(majority_sign_method="x"), "^dare_ties: " + SIGNS),
    (lambda: MagnitudeParams(density=2.0), "^magnitude_prune: " + DENSITY + "2.0$"),
    (lambda: KnotsParams(merge="x"), r"^knots: merge must be one of ties, ta, got 'x'$"),
    (lambda: KnotsParams(density=0.0), "^knots: " + DENSITY + "0.0$"),
    (lambda: KnotsParams(majority_sign_method="x"), "^knots: " + SIGNS),
    (lambda: TsvParams(fraction=0.0), r"^tsv_m: fraction must be in \(0, 1\] or none, got 0.0$"),
    (lambda: TsvParams(fraction=1.5), r"^tsv_m: fraction must be in \(0, 1\] or none, got 1.5$"),
    (lambda: PicoParams(base_method="x"), r"^pico: base_method must be one of ta, ties, tsv_m, iso_c, got 'x'$"),
    (lambda: PicoParams(density=0.0), "^pico: " + DENSITY + "0.0$"),
    (lambda: PicoParams(majority_sign_method="x"), "^pico: " + SIGNS),
    (lambda: PicoParams(strength=-0.5), r"^pico: strength must be >= 0, got -0.5$"),
])
def test_invalid_params_are_refused_with_exact_messages(build, msg):
    with pytest.raises(MergecoreError, match=msg):
        build()


def test_valid_boundary_params_are_accepted():
    assert PicoParams(strength=0.0).strength == 0.0 and PicoParams(strength=0.5).strength == 0.5
    assert TsvParams(fraction=1.0).fraction == 1.0 and TiesParams(density=1.0).density == 1.0


def test_registry_driver_and_weight_messages():
    with pytest.raises(MergecoreError, match=r"^unknown merge method 'fisher'; valid methods: (.+)$") as e:
        get_method("fisher")
    assert str(e.value).endswith("valid methods: " + ", ".join(METHODS))
    assert get_method(" Dare-Ties ").name == "dare_ties"
    s = adapter_set()
    with pytest.raises(MergecoreError, match=r"^params for ties must be TiesParams, got DareParams$"):
        merge_adapters(s, "ties", DareParams())
    with pytest.raises(MergecoreError, match=r"^osrm needs per-task input features at every module; pass features=$"):
        merge_adapters(s, "osrm")
    assert set(merge_adapters(s, METHODS["concat"])) == set(s.modules)  # a MergeMethod, not a name
    with pytest.raises(MergecoreError, match=r"^osrm needs input features of the tasks at every module"):
        merge_adapters(s, "osrm", features={"layer.0.q": make_features()})  # layer.1.q has none
    with pytest.raises(MergecoreError, match=r"^got 2 weights for 3 adapters; give one weight per adapter$"):
        check_weights([1, 2], 3)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(MergecoreError, match=r"^weights must be finite numbers, got \[1\.0, (inf|nan)\]$"):
            check_weights([1, bad], 2)
    assert check_weights(["1.5", 2], 2) == [1.5, 2.0]


def test_parse_params_keys_and_messages():
    assert parse_params(METHODS["ties"], ["density=0.5"]) == TiesParams(density=0.5)  # a MergeMethod, not a name
    assert parse_params("ties", [" majority-sign-method = frequency "]) == TiesParams(majority_sign_method="frequency")
    assert parse_params("uniform", None) == NoParams()
    with pytest.raises(MergecoreError, match=r"^unknown parameter 'x' for uniform; valid keys: \(none\)$"):
        parse_params("uniform", ["x=1"])
    with pytest.raises(MergecoreError, match=r"^unknown parameter 'topk' for ties; valid keys: density, "
                                             r"majority_sign_method, lam$"):
        parse_params("ties", ["topk=3"])
    with pytest.raises(MergecoreError, match=r"^parameter 'density' must be key=value; valid keys for ties: "
                                             r"density, majority_sign_method, lam$"):
        parse_params("ties", ["density"])
    # the value may contain '=': only the first one separates key and value
    with pytest.raises(MergecoreError, match=r"^pico: base_method must be one of ta, ties, tsv_m, iso_c, got 'ta=x'$"):
        parse_params("pico", ["base_method=ta=x"])
    for item, msg in (("density=abc", r"^ties: parameter density expects float, got 'abc'$"),):
        with pytest.raises(MergecoreError, match=msg):
            parse_params("ties", [item])
    with pytest.raises(MergecoreError, match=r"^dare_linear: parameter rescale expects bool, got 'maybe'$"):
        parse_params("dare_linear", ["rescale=maybe"])
    with pytest.raises(MergecoreError, match=r"^dare_linear: parameter seed expects int, got '1\.5'$"):
        parse_params("dare_linear", ["seed=1.5"])
    with pytest.raises(MergecoreError, match=r"^pico: parameter fraction expects float, got 'half'$"):
        parse_params("pico", ["fraction=half"])


@pytest.mark.parametrize("raw", ["none", "None", "null", "NULL", ""])
def test_optional_params_accept_none_spellings(raw):
    assert parse_params("tsv_m", [f"fraction={raw}"]).fraction is None
    assert parse_params("tsv_m", ["fraction=0.5"]).fraction == 0.5


@pytest.mark.parametrize("raw,value", [("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("on", True),
                                       ("ON", True), ("0", False), ("false", False), ("No", False), ("off", False),
                                       ("OFF", False)])
def test_bool_params_accept_usual_spellings(raw, value):
    assert parse_params("dare_linear", [f"rescale={raw}"]).rescale is value


def test_default_weights_of_each_family():
    assert get_method("tsv_m").default_weights(3, TsvParams()) == [1.0, 1.0, 1.0]
    assert get_method("iso_c").default_weights(2, IsoParams()) == [1.0, 1.0]
    pw = get_method("pico").default_weights
    assert pw(3, PicoParams(lam=0.5)) == [0.5] * 3
    assert pw(2, PicoParams()) == [0.3, 0.3] and pw(2, PicoParams(base_method="ties")) == [1.0, 1.0]
    assert get_method("uniform").default_weights(4, NoParams()) == [0.25] * 4


# ----------------------------------------------------------------------------- base helpers


def test_module_merge_checks_its_form():
    B, A = torch.ones(3, 1), torch.ones(1, 2)
    with pytest.raises(ValueError, match=r"^space must be one of \('lora-factors', 'core', 'dense'\), got 'sparse'$"):
        ModuleMerge(space="sparse", B=B, A=A)
    for kw in ({"B": B, "A": A, "dense": B @ A}, {}, {"B": B}):
        with pytest.raises(ValueError, match=r"^a ModuleMerge is either factored \(B and A\) or dense, not both"):
            ModuleMerge(space="dense", **kw)
    d = ModuleMerge(space="dense", dense=torch.ones(3, 2))
    assert not d.is_factored and d.rank is None and d.delta().dtype == F64 and d.info == {}
    f = ModuleMerge(space="core", B=B, A=A)
    assert f.is_factored and f.rank == 1 and torch.equal(f.delta(), torch.ones(3, 2, dtype=F64))


def test_dense_deltas_in_float64_with_absent_adapters():
    f = make_factors()
    d = dense_deltas([f[0], None, f[2]], dtype=F64)
    assert d.dtype == F64 and d.shape == (3, OUT, IN) and float(d[1].abs().max()) == 0.0
    for k in (0, 2):
        assert torch.allclose(d[k], f[k].delta(), rtol=1e-12, atol=1e-12)


def test_dense_methods_compute_on_the_adapters_device():
    """Nothing is allocated on a default device: on 'meta' tensors (a stand-in for an accelerator)
    the dense methods run and return 'meta' results."""
    f = [LoraFactors(A=x.A.to("meta"), B=x.B.to("meta"), scale=x.scale) for x in make_factors()]
    assert dense_deltas(f, F64).device.type == "meta"
    for name in ("ties", "magnitude_prune", "task_arithmetic"):
        out = run(name, f, W)
        assert (out.dense if out.dense is not None else out.A).device.type == "meta", name


def test_seed_is_mixed_with_the_module_name():
    """merge_adapters seeds module m with (seed * 1_000_003 + crc32(m)) mod 2^62 (documented), so the
    masks equal PEFT's after torch.manual_seed of that number."""
    s = adapter_set()
    for seed in (5, 2**62 + 7, 2**80):  # any int seed: the mixed one stays a valid 62-bit seed
        out = merge_adapters(s, "dare_linear", DareParams(density=0.5, seed=seed), weights=W)
        for m in s.modules:
            torch.manual_seed((seed * 1_000_003 + zlib.crc32(m.encode())) % 2**62)
            ref = pm.dare_linear(list(dense_deltas(s.factors(m))), torch.tensor(W), 0.5)
            assert torch.allclose(out[m].dense, ref, atol=1e-6, rtol=1e-6)
    lam = merge_adapters(s, "ties", TiesParams(lam=0.5))  # default weights come from params
    for m in s.modules:
        assert torch.allclose(lam[m].dense, pm.ties(list(dense_deltas(s.factors(m))), torch.full((3,), 0.5), 0.2,
                                                    "total"), atol=1e-6)


# ----------------------------------------------------------------------------- rank and core-space helpers


def test_numerical_rank_threshold():
    def t(*v):
        return torch.tensor(v, dtype=F64)

    assert numerical_rank(t()) == 0 and numerical_rank(t(0.0, 0.0)) == 0
    assert numerical_rank(t(3.0)) == 1 and numerical_rank(t(1.0, 0.0)) == 1
    assert numerical_rank(t(0.5, 0.25)) == 2
    assert numerical_rank(t(1.0, 1e-10)) == 1  # exactly RANK_RTOL * S[0] is not above it
    assert numerical_rank(t(2.0, 1e-10, 0.0)) == 1  # 1e-10 < 1e-10 * 2


def test_core_helpers_default_to_unit_scale():
    g = torch.Generator().manual_seed(3)
    cores = torch.randn(3, 5, 4, generator=g, dtype=F64)
    assert torch.allclose(weighted(cores, W), torch.stack([w * c for w, c in zip(W, cores)]))
    assert torch.allclose(iso_core(cores, W), iso_ref(list(cores), W), atol=1e-12)
    assert torch.allclose(iso_core(cores, W, 2.0), iso_ref(list(cores), W, 2.0), atol=1e-12)
    assert torch.allclose(tsv_core(cores, W, [1, 2, 1]), tsv_ref(list(cores), [1, 2, 1], W, fraction=1.0),
                          atol=1e-12)
    one = torch.zeros(1, 4, 3, dtype=F64)
    assert float(iso_core(one, [1.0]).abs().max()) == 0.0 and float(tsv_core(one, [1.0], [2]).abs().max()) == 0.0
    one[0, 0, 0] = 2.0  # a single kept direction is kept
    assert torch.allclose(tsv_core(one, [1.0], [1]), one[0])


@pytest.mark.parametrize("name", ["knots", "tsv_m", "iso_c", "pico"])
def test_rank_one_single_adapter_is_kept(name):
    f = make_factors(ranks=(1,))
    out = run(name, f, [1.0], None if name != "knots" else KnotsParams(density=1.0))
    assert rel(out.delta(), f[0].delta()) <= 1e-10 and out.rank == out.info["rank"] == 1


@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare_ties", "knots", "tsv_m", "iso_c", "pico"])
def test_single_zero_adapter_gives_zero(name):
    f = [LoraFactors(A=torch.ones(2, IN), B=torch.zeros(OUT, 2), scale=1.0)]
    out = run(name, f, [1.0])
    assert float(out.delta().abs().max()) == 0.0
    if out.space == "core":
        assert out.rank == out.info["rank"] == 1  # kept >= 1 so shapes stay valid


@pytest.mark.parametrize("name", ["task_arithmetic", "knots", "tsv_m", "iso_c", "pico"])
def test_info_rank_is_the_factor_rank(name):
    out = run(name, make_factors(), W)
    assert out.info["rank"] == out.rank == out.A.shape[0] == out.B.shape[1]
    if name == "task_arithmetic":
        assert out.rank == sum(RANKS)


# ----------------------------------------------------------------------------- TIES / DARE options


def conflict() -> torch.Tensor:
    """Three tasks where the total and the frequency sign elections disagree on every entry."""
    base = torch.tensor([[3.0, -3.0], [2.5, -4.0]])
    return torch.stack([base, -0.5 * base.sign(), -0.25 * base.sign()])


def test_sign_election_defaults_to_total():
    st = conflict()
    ones = torch.ones(3)
    assert torch.equal(majority_sign_mask(st), majority_sign_mask(st, "total"))
    assert torch.equal(majority_sign_mask(st)[0], torch.ones(2, 2, dtype=torch.bool))
    assert torch.allclose(ties_tensors(st, [1.0] * 3, 1.0), pm.ties(list(st), ones, 1.0, "total"))
    assert torch.allclose(ties_tensors(st, [1.0] * 3, 1.0, "frequency"), pm.ties(list(st), ones, 1.0, "frequency"))
    ref = pm.disjoint_merge(st, pm.calculate_majority_sign_mask(st, "total"))
    assert torch.allclose(dare_tensors(st, [1.0] * 3, 1.0, True, None, ties=True), ref)


def test_dare_ties_frequency_equals_peft():
    f = make_factors()
    d = list(dense_deltas(f))
    for seed in (0, 3):
        torch.manual_seed(seed)
        ref = pm.dare_ties(d, torch.tensor(W), 0.4, "frequency")
        out = run("dare_ties", f, W, DareTiesParams(density=0.4, seed=seed, majority_sign_method="frequency"))
        assert torch.allclose(out.dense, ref, atol=1e-6, rtol=1e-6) and out.info == {}


def test_dare_without_rescale_keeps_entries_unscaled():
    """rescale=false: the same Bernoulli masks (global RNG after manual_seed, one per task in order),
    kept entries not divided by density."""
    f = make_factors()
    d = dense_deltas(f)
    torch.manual_seed(4)
    masks = [torch.bernoulli(torch.full_like(x, 0.3)) for x in d]
    ref = sum(w * m * x for w, m, x in zip(W, masks, d))
    out = run("dare_linear", f, W, DareParams(density=0.3, rescale=False, seed=4))
    assert torch.allclose(out.dense, ref, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- KnOTS / TSV-M options


def test_knots_ties_frequency_equals_dense_definition():
    f = make_factors()
    D = deltas64(f)
    U, S, Vh = svd_r(torch.cat(D, dim=1))
    reps = list(Vh.reshape(len(S), len(D), IN).transpose(0, 1))
    # frequency election with K = 3 unpruned tasks never ties (an odd sum of +-1), so it does not
    # depend on the arbitrary signs of the singular vectors; with pruning it would
    for sign, density in (("frequency", 1.0), ("total", 0.5)):
        ref = (U * S) @ pm.ties(reps, torch.tensor(W, dtype=F64), density, sign)
        out = run("knots", f, W, KnotsParams(density=density, majority_sign_method=sign))
        assert rel(out.delta(), ref) <= 1e-8 and out.info["rank"] == len(S)


def test_tsv_m_alpha_and_absent_adapter():
    f = make_factors()
    out = run("tsv_m", f, W, TsvParams(alpha=2.0, fraction=0.5))
    assert rel(out.delta(), tsv_ref(deltas64(f), RANKS, W, 0.5, alpha=2.0)) <= 1e-8
    absent = run("tsv_m", [f[0], None, f[2]], W)
    assert absent.info["kept"] == [1, 0, 2]  # ceil(r_k / 3), 0 where the adapter is absent
    assert rel(absent.delta(), tsv_ref(deltas64([f[0], f[2]]), [2, 4], [W[0], W[2]], 1 / 3)) <= 1e-8


# ----------------------------------------------------------------------------- Pico options


@pytest.mark.parametrize("base,kw", [
    ("ta", {"strength": 0.5}), ("ta", {"strength": 2.0}),
    ("tsv_m", {"fraction": 0.5, "alpha": 2.0}), ("iso_c", {"alpha": 1.5}),
    ("ties", {"density": 0.5, "majority_sign_method": "frequency"}),
])
def test_pico_options_equal_dense_definition(base, kw):
    f = make_factors()
    out = run("pico", f, W, PicoParams(base_method=base, **kw))
    ref_kw = {"sign" if k == "majority_sign_method" else k: v for k, v in kw.items()}
    ref, ratio, c = pico_ref(f, W, base, **ref_kw)
    assert rel(out.delta(), ref) <= (1e-5 if base == "ties" else 1e-8)
    assert out.info["rescale"] == pytest.approx(ratio, rel=1e-5)
    assert torch.allclose(torch.tensor(out.info["sharing"], dtype=F64), c, atol=1e-8)


def test_pico_strength_zero_is_the_base_merge():
    f = make_factors()
    out = run("pico", f, W, PicoParams(strength=0.0))
    assert rel(out.delta(), sum(w * d for w, d in zip(W, deltas64(f)))) <= 1e-8
    assert out.info["rescale"] == pytest.approx(1.0, rel=1e-10)


def test_pico_edge_shapes_and_scales():
    # sum of ranks above in (R' = 12 != R'' = 10)
    f = make_factors(ranks=(4, 5, 6))
    assert rel(run("pico", f, W).delta(), pico_ref(f, W, "ta")[0]) <= 1e-8
    # tiny deltas: merged norm << 1 is still rescaled
    f = make_factors(scale=1e-4)
    out = run("pico", f, W)
    assert float(torch.linalg.norm(out.delta())) < 0.1  # below 1: the rescale must not depend on it
    assert rel(out.delta(), pico_ref(f, W, "ta")[0]) <= 1e-8
    # one rank-1 task: one direction used by one task
    one = run("pico", make_factors(ranks=(1,)), [1.0])
    assert one.info["sharing"] == [pytest.approx(1.0, rel=1e-10)]
    # every task zero: nothing shared, nothing rescaled
    zero = [LoraFactors(A=x.A, B=torch.zeros_like(x.B), scale=x.scale) for x in make_factors()]
    for base in ("ta", "ties"):
        out = run("pico", zero, W, PicoParams(base_method=base))
        assert out.info["sharing"] == [] and out.info["rescale"] == 1.0


def test_pico_calibrate_default_strength_is_one():
    g = torch.Generator().manual_seed(2)
    cores = torch.randn(3, 6, 2, generator=g, dtype=F64) @ torch.randn(3, 2, 5, generator=g, dtype=F64)
    cores[:, :, 0] += torch.randn(6, 1, generator=g, dtype=F64).squeeze()  # a shared column direction
    Dm, c = calibration_ref(list(cores), 1.0)
    cal, c_ours = pico_calibrate(cores)
    assert torch.allclose(cal, torch.stack([Dm @ m for m in cores]), atol=1e-10)
    assert torch.allclose(c_ours, c, atol=1e-10)


# ----------------------------------------------------------------------------- OSRM


def test_covariance_is_uncentered_over_n_minus_one():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(5, 3, generator=g)
    ref = sum(torch.outer(h, h) for h in H.double()) / 4
    assert covariance(H).dtype == F64 and torch.allclose(covariance(H), ref, atol=1e-12)
    one = H[:1]
    assert torch.allclose(covariance(one), torch.outer(one[0], one[0]).double(), atol=1e-12)  # n = 1: no division


def test_rel_err_at_small_scale_and_zero_reference():
    g = torch.Generator().manual_seed(1)
    B1, A1, B2, A2 = (1e-3 * torch.randn(*s, generator=g, dtype=F64) for s in ((6, 2), (2, 5), (6, 3), (3, 5)))
    assert rel_err(B1, A1, B2, A2) == pytest.approx(rel(B1 @ A1, B2 @ A2), rel=1e-8)
    assert rel_err(B1, A1, B1, A1) == pytest.approx(0.0, abs=1e-6)
    assert rel_err(B1, A1, torch.zeros_like(B2), A2) == 0.0


@pytest.mark.parametrize("feats,msg", [
    ({0: torch.randn(5, IN), 3: torch.randn(5, IN)}, r"^osrm: feature key 3 is not an adapter index 0\.\.2$"),
    ({0: torch.randn(5, IN), -1: torch.randn(5, IN)}, r"^osrm: feature key -1 is not an adapter index 0\.\.2$"),
    ({0: torch.randn(5, IN), "1": torch.randn(5, IN)}, r"^osrm: feature key '1' is not an adapter index 0\.\.2$"),
    ({0: torch.randn(5, IN), 1: torch.randn(IN)}, r"^osrm: features of task 1 must be \(n >= 1, 10\), got \(10,\)$"),
    ({0: torch.randn(5, IN), 1: torch.randn(5, 9)}, r"^osrm: features of task 1 must be \(n >= 1, 10\), got \(5, 9\)$"),
    ({0: torch.randn(5, IN), 1: torch.randn(0, IN)}, r"^osrm: features of task 1 must be \(n >= 1, 10\), got \(0, 10\)$"),
    ({}, r"^osrm needs input features of the tasks at every module; pass features=\{task: \(n, in\)\}$"),
    ({0: torch.randn(5, IN)}, r"^osrm: no features of any task other than 0; give features of at least two tasks$"),
])
def test_osrm_feature_errors(feats, msg):
    with pytest.raises(MergecoreError, match=msg):
        run("osrm", make_factors(), W, features=feats)


def best_subspace(delta: torch.Tensor, N: torch.Tensor, r: int) -> torch.Tensor:
    """Projector on the r-dim subspace of span(N) (orthonormal columns) that keeps most of delta."""
    _, _, Vh = torch.linalg.svd(delta @ N)
    P = Vh[:r] @ N.T
    return P.T @ P


def null_space(H: torch.Tensor) -> torch.Tensor:
    _, S, Vh = torch.linalg.svd(H.double())
    return Vh[int((S > 1e-9 * S[0]).sum()):].T


def check_osrm(out, f, projectors, weights):
    offs = [0]
    for x in f:
        offs.append(offs[-1] + x.rank)
    for k, (x, P) in enumerate(zip(f, projectors)):
        A = out.A[offs[k]: offs[k + 1]]
        assert A.shape[0] == x.rank and torch.allclose(A @ A.T, torch.eye(x.rank, dtype=F64), atol=1e-9)
        assert torch.allclose(A.T @ A, P, atol=1e-7)
        assert out.info["rel_err"][k] == pytest.approx(rel(x.delta() @ P, x.delta()), rel=1e-6)
    assert rel(out.delta(), sum(w * x.delta() @ P for w, x, P in zip(weights, f, projectors))) <= 1e-7
    assert out.info["rank"] == out.rank == sum(x.rank for x in f)


def test_osrm_tie_inside_the_spectrum():
    """Other task's covariance with eigenvalues 0.1, 1, 1, 1, 2, ...: the rank-2 basis is the 0.1
    direction plus, inside the tied 1-cluster, the direction that keeps most of the delta."""
    g = torch.Generator().manual_seed(7)
    Q, _ = torch.linalg.qr(torch.randn(IN, IN, generator=g, dtype=F64))
    lam = torch.tensor([0.1, 1, 1, 1, 2, 3, 4, 5, 6, 7], dtype=F64)
    H1 = (IN - 1) ** 0.5 * lam.sqrt()[:, None] * Q.T  # covariance == Q diag(lam) Q^T
    f = make_factors(ranks=(2, 1))
    feats = {0: make_features(K=1)[0], 1: H1}
    out = run("osrm", f, [1.0, 1.0], OsrmParams(fit_on_features=False), features=feats)
    P0 = torch.outer(Q[:, 0], Q[:, 0]) + best_subspace(f[0].delta(), Q[:, 1:4], 1)
    _, E = torch.linalg.eigh(covariance(feats[0]))
    check_osrm(out, f, [P0, torch.outer(E[:, 0], E[:, 0])], [1.0, 1.0])


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e-6])
@pytest.mark.parametrize("rank1", [False, True])
def test_osrm_null_space_choice_is_scale_free(scale, rank1):
    """Fewer examples than dimensions: A' spans, inside the other task's null space, the directions
    that keep most of the delta; the choice does not depend on the features' scale."""
    g = torch.Generator().manual_seed(11)
    H = torch.randn(4, IN, generator=g, dtype=F64)
    if rank1:
        H = torch.outer(torch.randn(4, generator=g, dtype=F64), H[0])
    f = make_factors(ranks=(2, 3))
    feats = {0: scale * H, 1: scale * torch.randn(3, IN, generator=g, dtype=F64)}
    out = run("osrm", f, [0.5, 2.0], OsrmParams(fit_on_features=False), features=feats)
    P = [best_subspace(f[k].delta(), null_space(feats[1 - k]), f[k].rank) for k in range(2)]
    check_osrm(out, f, P, [0.5, 2.0])


def test_osrm_rank_above_output_size():
    """r = 2 > out = 1: still two orthonormal rows in the other task's null space."""
    f = make_factors(ranks=(2, 1), out=1)
    feats = {0: torch.randn(3, IN), 1: torch.randn(3, IN)}
    out = run("osrm", f, [1.0, 1.0], OsrmParams(fit_on_features=False), features=feats)
    A = out.A[:2]
    assert out.rank == 3 and torch.allclose(A @ A.T, torch.eye(2, dtype=F64), atol=1e-9)
    assert float(torch.linalg.norm(A @ feats[1].double().T)) <= 1e-8
    P = best_subspace(f[0].delta(), null_space(feats[1]), 1)  # delta has rank 1: one direction decides
    assert out.info["rel_err"][0] == pytest.approx(rel(f[0].delta() @ P, f[0].delta()), rel=1e-6)


def test_osrm_feature_fit_errors_and_absent_adapter():
    f, feats = make_factors(), make_features()
    out = run("osrm", f, W, features=feats)
    offs = [0, 2, 5, 9]
    for k in range(3):
        A, B = out.A[offs[k]: offs[k + 1]], out.B[:, offs[k]: offs[k + 1]] / W[k]
        Hk = feats[k].double()
        assert out.info["rel_err_features"][k] == pytest.approx(rel((B @ A) @ Hk.T, f[k].delta() @ Hk.T), rel=1e-6)
    frob = run("osrm", f, W, OsrmParams(fit_on_features=False), features=feats)
    assert frob.info["rel_err_features"] == {}
    # adapter 1 absent at this module but its features still constrain adapter 0
    half = run("osrm", [f[0], None], [1.0, 1.0], OsrmParams(fit_on_features=False), features={0: feats[0], 1: feats[1]})
    _, E = torch.linalg.eigh(covariance(feats[1]))
    P = E[:, :2] @ E[:, :2].T
    assert rel(half.delta(), f[0].delta() @ P) <= 1e-8 and half.info["rank"] == 2
