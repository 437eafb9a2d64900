"""Learner on a tiny BERT: every objective x granularity moves only the coefficients."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from conftest import texts
from transformers import AutoTokenizer, BertForSequenceClassification

from mergecore.adapters import load_adapters
from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.errors import MergecoreError
from mergecore.forward.coefs import block_index
from mergecore.forward.model import MergeModel
from mergecore.forward.readers import ClassifierReader
from mergecore.forward.workbench import Workbench
from mergecore.learn.learner import Learner
from mergecore.learn.objectives import OBJECTIVES
from mergecore.learn.params import GRANULARITIES, PRESETS, LearnParams, apply_preset
from mergecore.runs.runner import run_learning
from mergecore.runs.store import RunStore


def tiny_bench(tiny_setup) -> Workbench:
    base_dir, dirs = tiny_setup
    adapters = load_adapters(dirs)
    mm = MergeModel(BertForSequenceClassification.from_pretrained(base_dir), adapters)
    tasks = []
    for k, (name, n_labels) in enumerate(zip(adapters.names, mm.num_labels)):
        cal, ev = texts(12, seed=10 + k), texts(10, seed=20 + k)
        tasks.append(Task(name, tuple(f"l{i}" for i in range(n_labels)),
                          Split(tuple((t,) for t in cal), tuple(i % n_labels for i in range(12))),
                          Split(tuple((t,) for t in ev), tuple(i % n_labels for i in range(10)))))
    return Workbench(adapters, TaskSet(tuple(tasks)), mm, ClassifierReader(AutoTokenizer.from_pretrained(base_dir)))


def _snapshot(mm: MergeModel) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in mm.named_parameters()}
    for layer in mm.layers:
        state[layer.name + ".A"], state[layer.name + ".B"] = layer.A_cat.clone(), layer.B_cat.clone()
    return state


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_only_coefficients_move(tiny_setup, objective, granularity):
    bench = tiny_bench(tiny_setup)
    before = _snapshot(bench.model)
    params = LearnParams(objective=objective, granularity=granularity, steps=3, lr=0.05, batch_size=4,
                         samples=12, labeled=8, eval_every=0)
    learner = Learner(bench, params)
    start = learner.source.gamma.detach().clone()
    res = learner.run()
    assert res.status == "done" and res.steps_done == 3
    moved = learner.source.gamma.detach()
    assert not torch.equal(moved, start), "coefficients did not move"
    assert res.coefs.shape == (bench.num_modules, bench.num_tasks)
    for name, value in _snapshot(bench.model).items():
        assert torch.equal(value, before[name]), f"{name} changed"
    assert all(p.grad is None for p in bench.model.parameters())


def test_block_grouping_and_task_rows_are_shared(tiny_setup):
    bench = tiny_bench(tiny_setup)
    group, names = block_index(bench.adapters.modules)
    assert len(names) == 3  # encoder layers 0, 1 and the pooler
    res = Learner(bench, LearnParams(granularity="task", steps=2, batch_size=4, eval_every=0)).run()
    assert torch.allclose(res.coefs, res.coefs[:1].expand_as(res.coefs))


def test_cancel_stops_between_steps_and_nan_loss_fails(tiny_setup, monkeypatch):
    bench = tiny_bench(tiny_setup)
    stop = threading.Event()
    seen = []

    def sink(kind, step, payload):
        seen.append((kind, step))
        if kind == "step" and step == 2:
            stop.set()

    res = Learner(bench, LearnParams(steps=50, batch_size=4, eval_every=0)).run(sink, stop)
    assert res.status == "cancelled" and res.steps_done == 2
    assert seen == [("stage", 0), ("step", 1), ("step", 2)]  # Stage 2 (Stage 1 runs on each batch's new rows), steps

    learner = Learner(bench, LearnParams(steps=5, batch_size=4, eval_every=0))
    good = learner.source.to_matrix().detach().clone()
    monkeypatch.setattr(learner, "_step_loss", lambda parts, refs: (torch.tensor(float("nan")), torch.zeros(3)))
    res = learner.run()
    assert res.status == "failed" and "nan" in res.message.lower() and torch.equal(res.coefs, good)


@pytest.mark.parametrize("bad_step", [1, 3])
def test_nan_gradient_fails_the_run_before_the_optimizer_moves(tiny_setup, bad_step):
    """A finite loss with a NaN gradient stops like a NaN loss: 'failed', the step named, the
    coefficients of the previous step kept (the start for step 1); no event for the bad step."""
    bench = tiny_bench(tiny_setup)
    learner = Learner(bench, LearnParams(steps=5, lr=0.05, batch_size=4, eval_every=0))
    start = learner.source.to_matrix().detach().clone()
    calls = []

    def poison(grad):  # called once per backward, on the coefficient parameter's gradient
        calls.append(1)
        return grad * float("nan") if len(calls) == bad_step else grad

    learner.source.gamma.register_hook(poison)
    seen = []
    res = learner.run(lambda kind, step, payload: kind == "step" and seen.append((step, payload)))
    assert res.status == "failed" and res.steps_done == bad_step - 1, res
    assert f"gradient became nan at step {bad_step}" in res.message and f"of step {bad_step - 1}" in res.message
    assert [s for s, _ in seen] == list(range(1, bad_step)) and all(math.isfinite(p["loss"]) for _, p in seen)
    kept = start if bad_step == 1 else torch.tensor(seen[-1][1]["coefs"]).expand_as(start)
    assert torch.equal(res.coefs, kept) and torch.isfinite(res.coefs).all()
    if bad_step > 1:
        assert not torch.equal(res.coefs, start)  # the steps before the bad one did move


# The papers' numbers, quoted (../shared/papers): every preset field is checked against them.
PAPER_PRESETS = {
    # SourceJS Sec. 3.5: "converges in approximately 300 steps with learning rate 0.02 and L2 regularization
    # weight lambda = 0.0002"; "128 unlabeled examples per task"; Eq. 7 "Gamma_0 = {1/K, ..., 1/K}";
    # Sec. 4.3: "layer-wise coefficients achieve 83.10%" (the headline).
    "sourcejs": dict(objective="js", granularity="layer", lr=0.02, l2=2e-4, l2_target="uniform", samples=128,
                     steps=300, init=None),  # None: 1/K
    # DivMerge Table 9, "KL/JS (Classif) Task 4 x #tasks 4 200 1e-2 0.5"; JS by default (Sec. 5.1); Eq. 4: no L2.
    "divmerge": dict(objective="js", granularity="task", lr=1e-2, batch_size=4, samples=200, steps=4 * 200 // 4,
                     init=0.5, l2=0.0),
    # DivMerge Table 9, "AdaMerging (Classif) Task 4 x #tasks 5 200 1e-3 0.5".
    "adamerging": dict(objective="entropy", granularity="task", lr=1e-3, batch_size=4, samples=200,
                       steps=5 * 200 // 4, init=0.5, l2=0.0),
    # LoRA-DV Sec. 4.4: "For unsupervised training loss ... we use Shannon entropy"; Sec. 5.1: "a tiny
    # calibration set of 32 samples", "learning rate of 0.005", "3 iterations, each comprising 10 epochs".
    "loradv": dict(objective="entropy", granularity="spectral", lr=0.005, samples=32, batch_size=4, iterations=3,
                   steps=3 * 10 * math.ceil(32 / 4), l2=0.0),
}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_presets_are_the_papers_values(name):
    assert set(PRESETS) == set(PAPER_PRESETS)
    params = apply_preset(LearnParams(), name).validate()
    for field_name, value in PAPER_PRESETS[name].items():
        assert getattr(params, field_name) == value, (name, field_name)
    if name == "sourcejs":
        assert params.start_value(8) == pytest.approx(1 / 8)
    if name == "loradv":
        assert params.steps == 240


def test_l2_target_is_a_checked_choice_of_the_cli_and_defaults_to_uniform():
    from mergecore.cli import build_parser
    from mergecore.cli.flags import dataclass_from_args

    assert LearnParams().l2_target == "uniform"
    with pytest.raises(MergecoreError, match="l2_target"):
        LearnParams(l2_target="origin").validate()
    args = build_parser().parse_args(["learn", "--l2-target", "start"])
    assert dataclass_from_args(LearnParams, args).l2_target == "start"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["learn", "--l2-target", "origin"])


def test_run_is_stored_with_events_and_scores(tiny_setup, tmp_path):
    bench = tiny_bench(tiny_setup)
    store = RunStore(tmp_path)
    run_id, result = run_learning(bench, LearnParams(steps=4, batch_size=4, eval_every=2, eval_limit=6), store)
    rec = store.get(run_id)
    assert rec.status == "done" and set(rec.result["scores"]) == set(bench.tasks.names)
    steps = store.events(run_id, "step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert [e["step"] for e in store.events(run_id, "eval")] == [2, 4]
    assert torch.allclose(store.get_tensors(run_id, "coefs")["coefs"], torch.tensor(result["coefs"]))
    # a second store object on the same folder (a restarted app) sees the same run
    assert RunStore(tmp_path).get(run_id).result == rec.result


def test_same_seed_same_coefficients(tiny_setup):
    bench = tiny_bench(tiny_setup)
    p = LearnParams(steps=3, batch_size=4, eval_every=0, seed=7)
    assert torch.equal(Learner(bench, p).run().coefs, Learner(bench, p).run().coefs)


def test_spectral_source_equals_dense_svd_recomputation(tiny_setup):
    """Gains of one reproduce the start merge; the singular values are those of the dense delta;
    a learned gain vector gives U diag(gain * sigma) V^T of the dense SVD."""
    from mergecore.forward.spectral import SpectralCoefs
    from mergecore.merged import MergedSource, coefs_to_merge

    bench = tiny_bench(tiny_setup)
    g = torch.Generator().manual_seed(3)
    merge = coefs_to_merge(bench.adapters, torch.randn(bench.num_modules, bench.num_tasks, generator=g))
    src = SpectralCoefs(merge, bench.adapters.modules)
    for l, name in enumerate(bench.adapters.modules):
        dense = merge[name].delta()
        ref = torch.linalg.svdvals(dense)
        ref = ref[ref > 1e-7 * ref.max()]
        assert torch.allclose(src.S[name].double(), ref, rtol=1e-5)
        assert torch.allclose(src.to_merge()[name].delta(), dense, atol=1e-5 * dense.abs().max())
    with torch.no_grad():
        src.gamma.copy_(torch.rand(src.gamma.shape, generator=g) * 2)
    for l, name in enumerate(bench.adapters.modules):
        U, S, Vh = torch.linalg.svd(merge[name].delta())
        r = len(src.S[name])
        lam = src.scales(l).detach().double()
        # singular vectors are unique up to sign per direction: compare the reconstructed deltas
        ref = (U[:, :r] * (lam * S[:r])) @ Vh[:r]
        assert torch.allclose(src.to_merge()[name].delta(), ref, atol=1e-5 * ref.abs().max())
    # the factored forward of the spectral source equals running its merge
    probs_spec = bench.predict(src, "evaluation")
    probs_merge = bench.predict(MergedSource(src.to_merge()), "evaluation")
    for a, b in zip(probs_spec, probs_merge):
        assert torch.allclose(a, b, atol=1e-5)


def test_spectral_run_iterates_and_stores_merge(tiny_setup, tmp_path):
    bench = tiny_bench(tiny_setup)
    store = RunStore(tmp_path)
    params = LearnParams(granularity="spectral", steps=6, iterations=3, batch_size=4, eval_every=0, start="ties")
    run_id, result = run_learning(bench, params, store)
    assert result["status"] == "done" and store.get(run_id).status == "done"
    assert {"merged", "spectral"} <= set(store.artifacts(run_id))
    assert len(store.events(run_id, "step")) == 6
