"""The learner's run on the tiny BERT bench: what every step and eval event, and the result, report.

References: Adam's first step (bias-corrected: each coefficient moves by lr * sign(grad)), the gradient
norm recomputed from the coefficient gradient, the cosine formula, the sampler's epochs written from
its specification, the rows the objective reads, and periodic statistics recomputed in numpy.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_learn_oracle import (
    BATCH,
    ROWS,
    SEED,
    learner_and_start,
    oracle,
    probs_on,
    run_steps,
    scaled_bench,
    start_coefs,
)

from mergecore.forward.coefs import FixedCoefs, block_index
from mergecore.learn.learner import BatchSampler, Learner
from mergecore.learn.params import LearnParams

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tiny_setup):
    return scaled_bench(tiny_setup)


def test_step_events_and_result(bench):
    """Steps 1..n, one 'step' event each: the gradient norm is the norm of the coefficient gradient, the
    coefficients are the parameter after the step, seconds grow and stay within the wall time; a clean
    run is 'done' with an empty message."""
    learner, _ = learner_and_start(bench, "task", steps=3, lr=0.05, l2=0.1)
    kinds = []
    t0 = time.perf_counter()
    events = []

    def sink(kind, step, payload):
        kinds.append(kind)
        if kind == "stage":
            return
        events.append({**payload, "step": step, "gamma": learner.source.gamma.detach().clone(),
                       "grad": learner.source.gamma.grad.clone()})

    res = learner.run(sink)
    wall = time.perf_counter() - t0
    assert kinds == ["stage"] + ["step"] * 3 and [e["step"] for e in events] == [1, 2, 3]
    assert (res.status, res.message, res.steps_done) == ("done", "", 3)
    for e in events:
        assert set(e) - {"step", "gamma", "grad"} == {"loss", "task_loss", "lr", "coefs", "grad_norm", "seconds"}
        assert set(e["task_loss"]) == set(bench.tasks.names)
        assert e["grad_norm"] == pytest.approx(float(torch.linalg.vector_norm(e["grad"].double())), rel=1e-6)
        assert e["grad_norm"] > 0
        torch.testing.assert_close(torch.tensor(e["coefs"]), e["gamma"])  # (1, K) for task granularity
    seconds = [e["seconds"] for e in events]
    assert 0 < seconds[0] <= seconds[1] <= seconds[2] <= res.seconds <= wall
    torch.testing.assert_close(res.coefs, events[-1]["gamma"].expand(bench.num_modules, -1))


@pytest.mark.parametrize("lr, exploding", [(100.5, True), (99.5, False)])
def test_exploding_coefficients_are_reported(bench, lr, exploding):
    """From 0, Adam's first (bias-corrected) step moves each coefficient by lr * g / (|g| + 1e-8), so
    max |c| = lr; the run warns above 100 and still finishes."""
    learner, _ = learner_and_start(bench, "task", steps=1, lr=lr, l2=0.0)
    with torch.no_grad():
        learner.source.gamma.zero_()
    res = learner.run()
    assert res.status == "done" and float(res.coefs.abs().max()) == pytest.approx(lr, rel=1e-4)
    if exploding:
        assert res.message == "coefficients are exploding (max |c| = 100); lower lr or raise l2"
    else:
        assert res.message == ""


def test_eval_events_every_n_steps_and_at_the_end(bench, monkeypatch):
    """eval_every=2 over 5 steps: evals at 2, 4 and the last step 5; the last one describes the final
    coefficients on the first eval_limit evaluation rows (numpy recomputation); experts are predicted once."""
    limit = 4
    params = LearnParams(granularity="layer", steps=5, lr=0.05, batch_size=BATCH, samples=ROWS, eval_every=2,
                         eval_limit=limit, seed=SEED)
    learner = Learner(bench, params, start=start_coefs(bench, "layer"))
    calls = []
    predict = bench.predict

    def spy(source, split="evaluation", limit=None, **kw):
        calls.append((type(source).__name__, split, limit))
        return predict(source, split, limit=limit, **kw)

    monkeypatch.setattr(bench, "predict", spy)
    events = []
    res = learner.run(lambda kind, step, payload: events.append((kind, step, payload)))
    assert res.status == "done"
    assert [(k, s) for k, s, _ in events if k == "eval"] == [("eval", 2), ("eval", 4), ("eval", 5)]
    assert [s for k, s, _ in events if k == "step"] == [1, 2, 3, 4, 5]
    assert [c for c in calls if c[0] == "RowRouting" and c[1] == "evaluation"] == [("RowRouting", "evaluation", limit)]
    monkeypatch.undo()
    final = events[-1][2]
    merged = bench.predict(FixedCoefs(res.coefs), "evaluation", limit=limit)
    experts = bench.predict(bench.routing(), "evaluation", limit=limit)
    for k, task in enumerate(bench.tasks):
        p, pe = merged[k].double().numpy(), experts[k].double().numpy()
        assert len(p) == limit
        gold = np.asarray(task.evaluation.labels[:limit])
        conf, pred = p.max(-1), p.argmax(-1)
        assert final["confidence"][task.name] == pytest.approx(conf.mean(), rel=1e-5)
        assert final["agreement"][task.name] == pytest.approx((pred == pe.argmax(-1)).mean())
        assert final["confidently_wrong"][task.name] == pytest.approx(((conf >= 0.9) & (pred != gold)).mean())
        assert final["score"][task.name] == pytest.approx(100 * (pred == gold).mean())


def test_no_expert_evaluation_without_periodic_eval(bench, monkeypatch):
    learner, _ = learner_and_start(bench, "task", steps=1)
    calls = []
    predict = bench.predict
    monkeypatch.setattr(bench, "predict", lambda source, split="evaluation", **kw: calls.append(split) or
                        predict(source, split, **kw))
    learner.run()
    assert "evaluation" not in calls


# ----------------------------------------------------------------------------- rows and the sampler


def sampler_oracle(sizes: list[int], seed: int, steps: int, batch: int) -> list[list[list[int]]]:
    """The specification: one generator; each task keeps a queue of shuffled epochs and draws a new
    epoch (randperm of its size, from the shared generator, in task order) only when the queue is too short."""
    gen = torch.Generator().manual_seed(seed)
    queues: list[list[int]] = [[] for _ in sizes]
    out = []
    for _ in range(steps):
        row = []
        for k, n in enumerate(sizes):
            while len(queues[k]) < batch:
                queues[k] += torch.randperm(n, generator=gen).tolist()
            row.append(queues[k][:batch])
            queues[k] = queues[k][batch:]
        out.append(row)
    return out


def test_sampler_draws_whole_epochs_in_order():
    sizes, batch, steps = [4, 6, 3], 2, 7
    want = sampler_oracle(sizes, 9, steps, batch)
    sampler = BatchSampler(sizes, 9)
    got = [[sampler.take(k, batch) for k in range(len(sizes))] for _ in range(steps)]
    assert all(idx.dtype == torch.long for row in got for idx in row)
    assert [[idx.tolist() for idx in row] for row in got] == want
    for k, n in enumerate(sizes):  # every epoch is a permutation of the task's rows
        drawn = [i for row in got for i in row[k].tolist()]
        for e in range(len(drawn) // n):
            assert sorted(drawn[e * n:(e + 1) * n]) == list(range(n))


@pytest.mark.parametrize("objective, samples, labeled", [("js", 8, 4), ("ce", 4, 8)])
def test_rows_come_from_samples_or_the_labeled_subset(bench, objective, samples, labeled):
    """Unsupervised objectives draw from the first ``samples`` calibration rows, ce from the first ``labeled``."""
    n = labeled if objective == "ce" else samples
    params = LearnParams(objective=objective, granularity="task", steps=1, l2=0.0, batch_size=BATCH,
                         samples=samples, labeled=labeled, eval_every=0, seed=SEED)
    start = start_coefs(bench, "task")
    reported = run_steps(Learner(bench, params, start=start))[0]["task_loss"]
    rows = [torch.tensor(r) for r in sampler_oracle([n] * bench.num_tasks, SEED, 1, BATCH)[0]]
    p = probs_on(bench, bench.routing(), rows)
    q = probs_on(bench, FixedCoefs(start.reshape(1, -1).repeat(bench.num_modules, 1)), rows)
    for k, task in enumerate(bench.tasks):
        labels = np.asarray(task.calibration.labels)[rows[k].numpy()]
        want = oracle(objective, p[k], q[k], labels).mean()
        assert reported[task.name] == pytest.approx(want, rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- start points


def test_start_matrix_is_averaged_for_shared_granularities(bench):
    L, K = bench.num_modules, bench.num_tasks
    M = start_coefs(bench, "layer")  # (L, K), rows differ
    group, names = block_index(bench.adapters.modules)
    for granularity, want in [("task", M.mean(0).expand(L, K)), ("block", M.mean(0).expand(L, K)), ("layer", M)]:
        learner = Learner(bench, LearnParams(granularity=granularity, eval_every=0), start=M)
        torch.testing.assert_close(learner.source.to_matrix().detach(), want)
    uniform = Learner(bench, LearnParams(granularity="layer", eval_every=0)).source.to_matrix().detach()
    torch.testing.assert_close(uniform, torch.full((L, K), 1.0 / K))


@pytest.mark.parametrize("switch", ["clamp", "softmax"])
def test_clamp_and_softmax_switches_reach_the_source(bench, switch):
    start = torch.tensor([-0.5, 0.4, 1.7])
    learner = Learner(bench, LearnParams(granularity="task", eval_every=0, **{switch: True}), start=start)
    want = start.clamp(0, 1) if switch == "clamp" else torch.exp(start) / torch.exp(start).sum()
    torch.testing.assert_close(learner.source.to_matrix().detach(), want.expand(bench.num_modules, -1))


def test_spectral_default_start_is_the_uniform_merge(bench):
    """Without a start merge, spectral learning starts from (1/K) sum_k s_k B_k A_k per module (dense)."""
    learner = Learner(bench, LearnParams(granularity="spectral", eval_every=0))
    K = bench.num_tasks
    for name in bench.adapters.modules:
        dense = sum(f.delta() for f in bench.adapters.factors(name) if f is not None) / K
        got = learner.source.to_merge()[name].delta()
        torch.testing.assert_close(got, dense, atol=1e-5 * float(dense.abs().max()), rtol=0)


@pytest.mark.parametrize("steps, iterations, lrs", [(2, 3, [1, 1]), (5, 3, [1, 0.5, 1, 0.5, 1])])
def test_spectral_phases_split_the_steps(bench, steps, iterations, lrs):
    """ceil(steps / T) steps per rethinking iteration, the cosine restarted in each; fewer steps than T
    iterations runs one step per iteration until the steps are spent."""
    lr = 0.01
    learner, _ = learner_and_start(bench, "spectral", steps=steps, lr=lr, iterations=iterations)
    events = []
    t0 = time.perf_counter()
    res = learner.run(lambda kind, step, payload: kind == "step" and events.append({**payload, "step": step}))
    wall = time.perf_counter() - t0
    assert [e["step"] for e in events] == list(range(1, steps + 1))
    np.testing.assert_allclose([e["lr"] for e in events], [lr * f for f in lrs], rtol=1e-9)
    assert (res.status, res.message, res.steps_done) == ("done", "", steps)
    assert events[-1]["seconds"] <= res.seconds <= wall
    assert torch.equal(res.coefs, torch.zeros(bench.num_modules, bench.num_tasks))
    gains = learner.source.gamma.detach()
    for l, name in enumerate(bench.adapters.modules):  # the result's merge is U diag(gain * sigma) V^T
        want = (learner.source.U[name] * (gains[learner.source.offsets[l]:learner.source.offsets[l + 1]]
                                          * learner.source.S[name])) @ learner.source.Vt[name]
        torch.testing.assert_close(res.merge[name].delta().float(), want, atol=1e-6, rtol=1e-5)
    assert set(res.spectral) and all(isinstance(v, torch.Tensor) for v in res.spectral.values())


@pytest.mark.parametrize("granularity", ["task", "layer", "block"])
def test_coefficients_live_on_the_bench_device(tiny_setup, granularity):
    from mergecore.adapters import load_adapters
    from mergecore.forward.generative import GenParams

    adapters = load_adapters(tiny_setup[1])
    K, L = len(adapters.names), len(adapters.modules)
    stub = SimpleNamespace(adapters=adapters, num_tasks=K, num_modules=L, gen_params=GenParams(),
                           device=torch.device("meta"))
    learner = Learner(stub, LearnParams(granularity=granularity))
    assert learner.source.gamma.device.type == "meta" and learner.gamma0.device.type == "meta"


@pytest.mark.parametrize("bad_step", [1, 3])
def test_nan_loss_names_the_step_and_keeps_the_previous_coefficients(bench, bad_step):
    learner, _ = learner_and_start(bench, "task", steps=5, lr=0.05)
    real, calls = learner._step_loss, []

    def step_loss(parts, refs):
        calls.append(1)
        loss, per_task = real(parts, refs)
        return (loss * float("nan") if len(calls) == bad_step else loss), per_task

    learner._step_loss = step_loss
    events = []
    res = learner.run(lambda kind, step, payload: kind == "step" and events.append(payload))
    assert (res.status, res.steps_done) == ("failed", bad_step - 1)
    assert res.message == f"loss became nan at step {bad_step}; kept the coefficients of step {bad_step - 1}"
    assert len(events) == bad_step - 1


def test_cancel_message_counts_the_steps_done(bench):
    import threading

    learner, _ = learner_and_start(bench, "task", steps=5)
    stop = threading.Event()
    res = learner.run(lambda kind, step, payload: stop.set() if step == 2 else None, stop)
    assert (res.status, res.steps_done, res.message) == ("cancelled", 2, "stopped by the user after 2 steps")
