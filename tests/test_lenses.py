"""Lenses end to end on a tiny BERT with three adapters: each lens against a direct recomputation
(dense SVD, scipy subspace angles, one single-expert pass per pair, hand-made bins)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from test_learn import tiny_bench

from mergecore.analysis import forward_lenses as fl
from mergecore.analysis import lenses
from mergecore.analysis.catalog import lens_tables
from mergecore.analysis.lenses import LensParams, aggregate
from mergecore.cli.analyze import write_csv
from mergecore.errors import MergecoreError
from mergecore.forward.coefs import FixedCoefs
from mergecore.learn.params import LearnParams
from mergecore.runs.folder import run_merge
from mergecore.runs.runner import run_learning, run_static
from mergecore.runs.store import RunStore

PARAMS = LensParams(limit=8, samples=8, max_rows=7)  # max_rows < rows: several chunks per task


@pytest.fixture(scope="module")
def setup(tiny_setup, tmp_path_factory):
    bench = tiny_bench(tiny_setup)
    store = RunStore(tmp_path_factory.mktemp("ws"))
    learned, _ = run_learning(bench, LearnParams(steps=3, batch_size=4, samples=12, eval_every=0, lr=0.1), store)
    static, _ = run_static(bench, "ties", None, store)  # dense merge
    return bench, store, learned, static


def expert(bench, k: int) -> FixedCoefs:
    onehot = torch.zeros(bench.num_modules, bench.num_tasks)
    onehot[:, k] = 1.0
    return FixedCoefs(onehot)


# ----------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("which", ["learned", "static"])
def test_spectra_equal_dense_svdvals(setup, which):
    bench, store, learned, static = setup
    run_id = learned if which == "learned" else static
    lens = lenses.spectra_lens(bench, store, run_id, PARAMS)
    merge = run_merge(store, run_id, bench.adapters)
    label = store.get(run_id).label
    for module in bench.adapters.modules:
        for name, f in zip(bench.adapters.names, bench.adapters.factors(module)):
            if f is None:
                assert name not in lens["spectra"][module]
                continue
            _close_spectrum(lens["spectra"][module][name], f.delta())
        _close_spectrum(lens["spectra"][module][label], merge[module].delta())
    row = next(r for r in lens["rows"] if r["kind"] == "run")
    s = torch.tensor(lens["spectra"][row["module"]][label], dtype=torch.float64)
    p = s / s.sum()
    assert row["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum())))
    assert row["energy_at_r"] == pytest.approx(float((s[: row["r"]] ** 2).sum() / (s**2).sum()))


def _close_spectrum(values: list, dense: torch.Tensor) -> None:
    ref = torch.linalg.svdvals(dense)
    s = torch.tensor(values, dtype=torch.float64)
    assert torch.allclose(s, ref[: len(s)], rtol=1e-5, atol=1e-6)
    assert float(torch.cat([ref[len(s):], ref.new_zeros(1)]).abs().max()) < 1e-5 * float(ref[0])  # nothing lost beyond rank


def test_spectral_run_scales(setup):
    bench, store, *_ = setup
    run_id = store.create("spectral", "spectral", {"method": "spectral"})
    module = bench.adapters.modules[0]
    store.put_tensors(run_id, "spectral", {f"sigma::{module}": torch.tensor([3.0, 2.0, 1.0]),
                                           f"scale::{module}": torch.tensor([0.5, -2.0, 1.0])})
    store.finish(run_id, "done", {})
    lens = lenses.spectra_lens(bench, store, run_id, PARAMS)
    assert lens["spectral"][module]["scale"] == [0.5, -2.0, 1.0]
    assert lens["spectra"][module][store.get(run_id).label] == [4.0, 1.5, 1.0]


# ----------------------------------------------------------------------------- subspaces


def test_subspaces_match_scipy_and_dense_interference(setup):
    bench, store, *_ = setup
    lens = lenses.subspaces_lens(bench, store, PARAMS)
    feats = lenses.collect_features(bench, PARAMS.samples)
    for module in bench.adapters.modules:
        factors = bench.adapters.factors(module)
        for i, fi in enumerate(factors):
            for j, fj in enumerate(factors):
                if fi is None or fj is None:
                    assert math.isnan(lens["b_overlap"][module][i][j])
                    continue
                angles_b = scipy.linalg.subspace_angles(fi.B.double().numpy(), fj.B.double().numpy())
                angles_a = scipy.linalg.subspace_angles(fi.A.double().T.numpy(), fj.A.double().T.numpy())
                assert lens["b_overlap"][module][i][j] == pytest.approx(np.mean(np.cos(angles_b) ** 2), abs=1e-9)
                assert lens["a_overlap"][module][i][j] == pytest.approx(np.mean(np.cos(angles_a) ** 2), abs=1e-9)
                di, dj = fi.delta().flatten(), fj.delta().flatten()
                assert lens["cosine"][module][i][j] == pytest.approx(float(di @ dj / (di.norm() * dj.norm())), abs=1e-9)
            for j, fj in enumerate(factors):  # adapter j on task i's features
                if fj is not None:
                    H = feats[module][i].double()
                    ref = float(torch.linalg.matrix_norm(fj.delta() @ H.T)) / math.sqrt(len(H))
                    assert lens["interference"][module][i][j] == pytest.approx(ref, rel=1e-5)
    mean = aggregate(lens["b_overlap"], lens["modules"])
    assert all(mean[k][k] == pytest.approx(1.0) for k in range(bench.num_tasks))
    with pytest.raises(MergecoreError):
        aggregate(lens["b_overlap"], [])


# ----------------------------------------------------------------------------- divergence


def _js(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a.clamp_min(1e-300).log() - b.clamp_min(1e-300).log())).sum(-1)  # noqa: E731
    return float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean())


def test_divergence_matches_single_expert_passes(setup):
    bench, store, *_ = setup
    lens = fl.divergence_lens(bench, store, PARAMS)
    K = bench.num_tasks
    per_expert = [bench.predict(expert(bench, j), "evaluation", PARAMS.limit) for j in range(K)]
    for i, task in enumerate(bench.tasks):
        assert lens["js"][i][i] == 0.0 and lens["kl"][i][i] == 0.0
        gold = np.asarray(task.evaluation.labels[: PARAMS.limit])
        for j in range(K):
            p, q = per_expert[i][i], per_expert[j][i]  # expert i vs expert j on task i's inputs
            if i != j:
                assert lens["js"][i][j] == pytest.approx(_js(p, q), rel=1e-4, abs=1e-7)
                kl = float((p.double() * (p.double().log() - q.double().log())).sum(-1).mean())
                assert lens["kl"][i][j] == pytest.approx(kl, rel=1e-4, abs=1e-7)
            acc = 100.0 * float(np.mean(q.argmax(-1).numpy() == gold))
            assert lens["scores"][i][j] == pytest.approx(acc)
    assert -1.0 <= lens["spearman_js"] <= 1.0 or math.isnan(lens["spearman_js"])


# ----------------------------------------------------------------------------- representation


def test_representation_bias_of_expert_against_itself_is_zero(setup):
    bench, *_ = setup
    rep = fl.representation_of(bench, bench.routing(), "evaluation", PARAMS.limit, PARAMS.max_rows)
    for t in bench.tasks.names:
        assert rep["bias"][t] == [0.0] * len(rep["layers"])


def test_representation_bias_matches_direct_mean_l1(setup):
    bench, store, learned, _ = setup
    rep = fl.representation_lens(bench, store, learned, PARAMS)
    source = fl.run_source(bench, store, learned)
    k = 1
    enc = bench.encoded(k, "evaluation", PARAMS.limit)
    segments, inputs = bench.reader.batch([(k, enc, torch.arange(len(enc)))], bench.device)
    hm = fl.hidden_states(bench, source, segments, inputs)
    he = fl.hidden_states(bench, expert(bench, k), segments, inputs)
    mask = inputs["attention_mask"].bool()
    ref = [float((a.double() - b.double()).abs().mean(-1)[mask].mean()) for a, b in zip(hm, he)]
    assert rep["bias"][bench.tasks.names[k]] == pytest.approx(ref, rel=1e-5, abs=1e-9)
    assert rep["bias"][bench.tasks.names[k]][0] == 0.0  # embeddings carry no LoRA
    assert rep["mean"][bench.tasks.names[k]] > 0.0


# ----------------------------------------------------------------------------- calibration


def test_calibration_matches_hand_computation(setup):
    bench, store, learned, _ = setup
    params = LensParams(limit=8, n_bins=4, threshold=0.6)
    lens = fl.calibration_lens(bench, store, learned, params)
    merged = bench.predict(fl.run_source(bench, store, learned), "evaluation", params.limit)
    experts = bench.predict(bench.routing(), "evaluation", params.limit)
    confs, oks = [], []
    for task, pm, pe in zip(bench.tasks, merged, experts):
        gold = torch.tensor(task.evaluation.labels[: params.limit]).long()
        conf, pred = pm.max(-1)
        confs += conf.tolist()
        oks += (pred == gold).tolist()
        s = lens["summary"][task.name]
        assert s["agreement"] == pytest.approx(float((pred == pe.argmax(-1)).float().mean()))
        assert s["confidently_wrong"] == pytest.approx(float(((conf >= 0.6) & (pred != gold)).float().mean()))
    # hand-made bins over all tasks: [0, .25), [.25, .5), [.5, .75), [.75, 1]
    count, acc, cbar = [0] * 4, [0.0] * 4, [0.0] * 4
    for c, ok in zip(confs, oks):
        b = min(int(c * 4), 3)
        count[b] += 1
        acc[b] += ok
        cbar[b] += c
    bins = lens["bins"]["all"]
    assert bins["count"] == count
    ece = sum(abs(acc[b] - cbar[b]) / len(confs) for b in range(4) if count[b])
    assert bins["ece"] == pytest.approx(ece, abs=1e-6) and lens["overall"]["ece"] == pytest.approx(ece, abs=1e-6)
    for b in range(4):
        if count[b]:
            assert bins["accuracy"][b] == pytest.approx(acc[b] / count[b])
            assert bins["confidence"][b] == pytest.approx(cbar[b] / count[b], rel=1e-5)
    ranked = fl.sort_examples(lens["examples"])
    first_agree = next((n for n, e in enumerate(ranked) if e["agree"]), len(ranked))
    assert all(not e["agree"] for e in ranked[:first_agree])
    assert all(a["merged_conf"] >= b["merged_conf"] for a, b in zip(ranked[:first_agree], ranked[1:first_agree]))


# ----------------------------------------------------------------------------- cache + tables


def test_second_call_is_served_from_the_cache(setup, monkeypatch, tmp_path):
    bench, store, learned, _ = setup
    first = fl.representation_lens(bench, store, learned, PARAMS)
    monkeypatch.setattr(fl, "representation_of", lambda *a, **k: pytest.fail("recomputed a cached lens"))
    assert fl.representation_lens(bench, store, learned, PARAMS) == first
    assert lenses.lens_key(bench, "representation", learned, PARAMS) != lenses.lens_key(
        bench, "representation", learned, LensParams(limit=9))
    for what, lens in (("representation", first), ("spectra", lenses.spectra_lens(bench, store, learned, PARAMS))):
        for stem, rows in lens_tables(what, lens).items():
            write_csv(tmp_path / f"{stem}.csv", rows)
            assert (tmp_path / f"{stem}.csv").read_text().count("\n") == len(rows) + 1


def test_bad_params_are_user_errors():
    with pytest.raises(MergecoreError):
        LensParams(limit=0).validate()
    with pytest.raises(MergecoreError):
        LensParams(threshold=1.5).validate()
