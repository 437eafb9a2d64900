"""Oracles for the learner: every number it reports is recomputed here independently.

The per-task loss of step 1 is rebuilt from the rows the sampler draws, a routed expert forward,
a forward of the start coefficients through a *fixed* source, and scipy's divergences (float64);
the L2 term and its gradient against lambda ||Gamma - Gamma_0||^2 with Gamma_0 = 1/K (SourceJS
Eq. 7); the learning rate against the cosine formula; each coefficient row against the modules it
may drive; the Stage-1 references against one-hot expert runs. Each check fails for a learner
that swaps KL's direction, reads the wrong rows or rows of Gamma, pulls toward the wrong point,
keeps a constant learning rate, or compares against anything but the experts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy as sp_entropy
from test_learn import tiny_bench

from mergecore.forward.coefs import FixedCoefs, block_index
from mergecore.forward.model import RoutedHead
from mergecore.forward.spectral import SpectralCoefs
from mergecore.learn.learner import BatchSampler, Learner, make_source, references
from mergecore.learn.objectives import OBJECTIVES
from mergecore.learn.params import GRANULARITIES, LearnParams
from mergecore.merged import MergedSource, coefs_to_merge

ROWS = 12  # calibration rows per task in tiny_bench
BATCH = 4
SEED = 5
REL, ABS = 1e-4, 1e-6  # float32 learner vs float64 oracle
HEAD_SCALE = 300.0


@pytest.fixture(scope="module")
def bench(tiny_setup):
    return scaled_bench(tiny_setup)


def scaled_bench(tiny_setup):
    """The tiny BERT bench with every task head scaled x300: the random heads are near-flat (experts and merges
    all predict ~1/C, JS ~1e-7); scaled, the experts are confident and disagree with the merges (JS ~1e-2..0.5)."""
    b = tiny_bench(tiny_setup)
    with torch.no_grad():
        for module in b.model.modules():
            if isinstance(module, RoutedHead):
                for head in module.heads:
                    head.weight.mul_(HEAD_SCALE)
                    head.bias.mul_(HEAD_SCALE)
    return b


# ----------------------------------------------------------------------------- helpers


def start_coefs(bench, granularity: str) -> torch.Tensor:
    """A start away from uniform 1/K: (L, K) for layer-wise, one shared row (K,) otherwise."""
    g = torch.Generator().manual_seed(11)
    shape = (bench.num_modules, bench.num_tasks) if granularity == "layer" else (bench.num_tasks,)
    return 0.1 + 0.8 * torch.rand(shape, generator=g)


def as_matrix(bench, start: torch.Tensor) -> torch.Tensor:
    return start if start.ndim == 2 else start.reshape(1, -1).repeat(bench.num_modules, 1)


def learner_and_start(bench, granularity: str, **kw) -> tuple[Learner, object]:
    """The learner under test and a fixed source running its start point (FixedCoefs, or the start merge)."""
    params = LearnParams(granularity=granularity, batch_size=BATCH, samples=ROWS, labeled=ROWS, eval_every=0,
                         seed=SEED, **kw)
    start = start_coefs(bench, "layer" if granularity == "spectral" else granularity)
    if granularity == "spectral":
        merge = coefs_to_merge(bench.adapters, start)
        return Learner(bench, params, start_merge=merge), MergedSource(merge)
    return Learner(bench, params, start=start), FixedCoefs(as_matrix(bench, start))


def run_steps(learner: Learner) -> list[dict]:
    """Step events, each with the coefficient parameter after the step and the gradient of the step."""
    events = []

    def sink(kind, step, payload):
        if kind == "step":
            gamma = learner.source.gamma
            events.append({**payload, "step": step, "gamma": gamma.detach().clone(), "grad": gamma.grad.clone()})

    res = learner.run(sink)
    assert res.status == "done", res.message
    return events


def drawn_rows(sizes: list[int], seed: int, steps: int, batch: int) -> list[list[torch.Tensor]]:
    """The rows the learner's sampler draws: same seed, tasks taken in order at every step."""
    sampler = BatchSampler(sizes, seed)
    return [[sampler.take(k, min(batch, n)) for k, n in enumerate(sizes)] for _ in range(steps)]


@torch.no_grad()
def probs_on(bench, source, rows: list[torch.Tensor]) -> list[np.ndarray]:
    """Label probabilities (float64) of each task's given calibration rows under a source."""
    parts = [(k, bench.encoded(k, "calibration", limit=ROWS), idx) for k, idx in enumerate(rows)]
    bench.model.set_source(source)
    segments, inputs = bench.reader.batch(parts, bench.device)
    return [torch.softmax(lg.double(), -1).cpu().numpy() for lg in bench.reader.label_logits(bench.model, segments, inputs)]


def oracle(objective: str, p: np.ndarray, q: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row objective, written independently of mergecore.divergences (scipy, natural log)."""
    if objective == "js":
        return jensenshannon(p, q, axis=1) ** 2  # scipy returns the distance: its square is the divergence
    if objective == "kl":
        return rel_entr(p, q).sum(1)  # KL(expert || merged)
    if objective == "rkl":
        return rel_entr(q, p).sum(1)  # KL(merged || expert)
    if objective == "entropy":
        return sp_entropy(q, axis=1)
    if objective == "ce":
        return -np.log(q[np.arange(len(labels)), labels])
    raise AssertionError(objective)


def mean_task_loss(event: dict) -> float:
    return float(np.mean(list(event["task_loss"].values())))


# ----------------------------------------------------------------------------- 1. the per-task loss


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_step1_task_loss_is_the_objective_on_the_drawn_rows(bench, objective, granularity):
    learner, start = learner_and_start(bench, granularity, objective=objective, steps=1, l2=0.0)
    reported = run_steps(learner)[0]["task_loss"]
    rows = drawn_rows([ROWS] * bench.num_tasks, SEED, 1, BATCH)[0]
    p, q = probs_on(bench, bench.routing(), rows), probs_on(bench, start, rows)
    for k, task in enumerate(bench.tasks):
        labels = np.asarray(task.calibration.labels)[rows[k].numpy()]
        want = oracle(objective, p[k], q[k], labels).mean()
        assert reported[task.name] == pytest.approx(want, rel=REL, abs=ABS), (task.name, reported, want)
        assert oracle("js", p[k], q[k], labels).mean() > 1e-3  # the start point is not the expert
        if objective == "kl":  # the fixture tells the two directions apart: swapping them fails above
            reverse = oracle("rkl", p[k], q[k], labels).mean()
            assert abs(reverse - want) > 100 * (REL * want + ABS), (want, reverse)


def test_step_rows_follow_the_sampler(bench):
    """Later steps too: step 3's per-task loss is the objective on the third draw of the sampler."""
    learner, start = learner_and_start(bench, "task", objective="kl", steps=3, lr=1e-9, l2=0.0)
    reported = run_steps(learner)[2]["task_loss"]  # lr ~ 0: still the start coefficients
    rows = drawn_rows([ROWS] * bench.num_tasks, SEED, 3, BATCH)[2]
    p, q = probs_on(bench, bench.routing(), rows), probs_on(bench, start, rows)
    for k, task in enumerate(bench.tasks):
        assert reported[task.name] == pytest.approx(oracle("kl", p[k], q[k], None).mean(), rel=1e-3, abs=1e-5)


# ----------------------------------------------------------------------------- 2. the L2 pull (SourceJS Eq. 7)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("target", ["uniform", "start"])
def test_l2_term_is_lambda_times_squared_distance_to_gamma0(bench, granularity, target):
    """Total minus the sum of task losses = lambda ||Gamma - Gamma_0||^2 at steps 1 and 2, with
    Gamma_0 = 1/K (uniform, SourceJS Eq. 7) or the start point; spectral gains are pulled toward 1."""
    lam, K = 0.1, bench.num_tasks
    learner, _ = learner_and_start(bench, granularity, steps=2, lr=0.05, l2=lam, l2_target=target,
                                   iterations=1)  # spectral: one rethinking phase (a new phase restarts at gains 1)
    gamma_start = learner.source.gamma.detach().clone()
    events = run_steps(learner)
    if granularity == "spectral":
        anchor = torch.ones_like(gamma_start)
    else:
        anchor = torch.full_like(gamma_start, 1.0 / K) if target == "uniform" else gamma_start
    for event, gamma in zip(events, (gamma_start, events[0]["gamma"])):  # the step's loss uses the previous gamma
        term = event["loss"] - sum(event["task_loss"].values())
        want = lam * float(((gamma.double() - anchor.double()) ** 2).sum())
        assert term == pytest.approx(want, rel=1e-3, abs=1e-6), (event["step"], term, want)
    far = lam * float(((events[0]["gamma"].double() - anchor.double()) ** 2).sum())
    assert far > 1e-4  # the term the test checks at step 2 is not zero


@pytest.mark.parametrize("granularity", ["task", "layer", "block"])
def test_l2_gradient_is_two_lambda_times_gamma_minus_uniform(bench, granularity):
    """Same data, l2 = 0 vs l2 = lambda: the coefficient gradients differ by 2 lambda (Gamma - 1/K)."""
    lam, K = 0.05, bench.num_tasks
    plain, _ = learner_and_start(bench, granularity, steps=1, l2=0.0)
    pulled, _ = learner_and_start(bench, granularity, steps=1, l2=lam)
    gamma = pulled.source.gamma.detach().clone()
    diff = run_steps(pulled)[0]["grad"] - run_steps(plain)[0]["grad"]
    want = 2 * lam * (gamma - 1.0 / K)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(diff, want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- 3. the cosine schedule


@pytest.mark.parametrize("granularity", ["task", "spectral"])
def test_lr_is_cosine_per_phase(bench, granularity):
    """lr at step s of n = lr * 0.5 * (1 + cos(pi * (s - 1) / n)); spectral restarts it in each of T iterations."""
    lr, steps, phases = 0.03, 6, 2 if granularity == "spectral" else 1
    learner, _ = learner_and_start(bench, granularity, steps=steps, lr=lr, iterations=phases)
    got = [e["lr"] for e in run_steps(learner)]
    n = steps // phases
    want = [lr * 0.5 * (1 + math.cos(math.pi * (s - 1) / n)) for _ in range(phases) for s in range(1, n + 1)]
    assert max(want) - min(want) > 0.5 * lr  # a constant lr cannot pass
    np.testing.assert_allclose(got, want, rtol=1e-9)


# ----------------------------------------------------------------------------- 4. each row drives its own modules


def owned_rows(bench, granularity: str, source, l: int) -> torch.Tensor:
    """Boolean mask over the parameter's rows (entries for spectral) that module l may read."""
    mask = torch.zeros(source.gamma.shape[0], dtype=torch.bool)
    if granularity == "spectral":
        mask[source.offsets[l]:source.offsets[l + 1]] = True
    elif granularity == "block":
        mask[int(block_index(bench.adapters.modules)[0][l])] = True
    else:
        mask[l] = True
    return mask


@pytest.mark.parametrize("granularity", ["layer", "block", "spectral"])
def test_each_coefficient_row_drives_only_its_own_modules(bench, granularity):
    """d(output of module l) / d(Gamma) with every module's input cut from the graph: nonzero only in
    the rows module l reads (its own row, its block's row, its own gains). 'Every layer reads row 0' fails."""
    start = start_coefs(bench, "layer")
    if granularity == "spectral":
        source = SpectralCoefs(coefs_to_merge(bench.adapters, start), bench.adapters.modules)
    else:
        source = make_source(bench, granularity, start if granularity == "layer" else start[0])
    outs, hooks = {}, []
    for layer in bench.model.layers:
        hooks.append(layer.register_forward_pre_hook(lambda mod, args: (args[0].detach(),)))
        hooks.append(layer.register_forward_hook(lambda mod, args, out: outs.__setitem__(mod.index, out)))
    try:
        parts = [(k, bench.encoded(k, "calibration", limit=ROWS), torch.arange(3)) for k in range(bench.num_tasks)]
        segments, inputs = bench.reader.batch(parts, bench.device)
        bench.model.set_source(source)
        bench.reader.label_logits(bench.model, segments, inputs)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(0)
    for l in range(bench.num_modules):
        weights = torch.randn(outs[l].shape, generator=g)
        (grad,) = torch.autograd.grad((outs[l] * weights).sum(), source.gamma, retain_graph=True)
        mine = owned_rows(bench, granularity, source, l)
        assert torch.count_nonzero(grad[~mine]) == 0, (l, grad)
        assert grad[mine].abs().max() > 1e-6, (l, grad)


# ----------------------------------------------------------------------------- 5. Stage-1 references


def test_references_are_each_experts_own_probabilities(bench):
    """Stage 1 caches expert k's probabilities on task k (a one-hot FixedCoefs run), not the merge's or uniform."""
    L, K = bench.num_modules, bench.num_tasks
    refs = references(bench, LearnParams(objective="js", samples=ROWS))
    refs.fill([(k, bench.encoded(k, "calibration", limit=ROWS), torch.arange(ROWS)) for k in range(K)], bench.uniform())
    uniform = bench.predict(bench.uniform(), "calibration", limit=ROWS)
    for k in range(K):
        onehot = torch.zeros(L, K)
        onehot[:, k] = 1.0
        own = bench.predict(FixedCoefs(onehot), "calibration", limit=ROWS)[k]
        torch.testing.assert_close(refs[k].cpu(), own, rtol=1e-5, atol=1e-6)
        assert (own - uniform[k]).abs().max() > 1e-2  # an expert is told apart from the uniform merge
    labels = references(bench, LearnParams(objective="ce", labeled=8))
    for k, t in enumerate(bench.tasks):
        assert labels[k].tolist() == list(t.calibration.labels[:8])
    assert references(bench, LearnParams(objective="entropy")) == [None] * K


def test_stage1_on_demand_computes_each_row_once_as_expert_k_on_task_k(bench, monkeypatch):
    """The learner's ExpertReferences: a batch's new rows only, each one the routed expert's probabilities
    (as the eager Stage 1 has them), rows not seen yet untouched, and the learner's source back afterwards."""
    from mergecore.learn.learner import ExpertReferences

    eager = bench.predict(bench.routing(), "calibration", limit=ROWS)  # every row up front, in 256-row chunks
    lazy = references(bench, LearnParams(objective="js", samples=ROWS))
    assert isinstance(lazy, ExpertReferences) and all(lazy[k] is None for k in range(bench.num_tasks))
    assert [len(v) for v in references(bench, LearnParams(objective="js", samples=5)).known.values()] == [5] * len(
        bench.label_tasks)  # the run's calibration rows, not the split's
    rows, real = [], bench.reader.label_logits
    monkeypatch.setattr(bench.reader, "label_logits", lambda mm, seg, inputs: rows.append(
        [e - s for _, s, e in seg.spans]) or real(mm, seg, inputs))
    encoded = [bench.encoded(k, "calibration", limit=ROWS) for k in range(bench.num_tasks)]
    source = bench.uniform()
    lazy.fill([(k, enc, torch.tensor([3, 0, 3, 5])) for k, enc in enumerate(encoded)], source)
    lazy.fill([(k, enc, torch.tensor([5, 7])) for k, enc in enumerate(encoded)], source)
    lazy.fill([(k, enc, torch.tensor([0, 7])) for k, enc in enumerate(encoded)], source)  # nothing new: no forward
    assert rows == [[3] * bench.num_tasks, [1] * bench.num_tasks]
    assert bench.model.slot.source is source
    for k in range(bench.num_tasks):
        seen = torch.tensor([0, 3, 5, 7])
        torch.testing.assert_close(lazy[k][seen].cpu(), eager[k][seen].cpu(), rtol=1e-5, atol=1e-6)
        assert lazy[k].shape == eager[k].shape and not lazy[k][1].any()  # row 1: no batch held it yet


def test_a_run_with_stage1_on_demand_equals_one_with_stage1_up_front(bench, monkeypatch):
    """Same rows, same references, same steps: the coefficients agree with an eager Stage 1 run."""
    from mergecore.learn.learner import ExpertReferences

    params = LearnParams(objective="js", granularity="layer", samples=ROWS, batch_size=4, steps=6, eval_every=0)
    lazy = Learner(bench, params).run()
    real = ExpertReferences.fill
    monkeypatch.setattr(ExpertReferences, "fill", lambda self, parts, source: real(  # every row at the first step
        self, [(k, enc, torch.arange(len(enc))) for k, enc, _ in parts], source))
    eager = Learner(bench, params).run()
    torch.testing.assert_close(lazy.coefs, eager.coefs, rtol=1e-5, atol=1e-6)
    assert (lazy.coefs - 1 / bench.num_tasks).abs().max() > 1e-4  # the coefficients moved


# ----------------------------------------------------------------------------- 6. the loss falls


@pytest.mark.parametrize("objective", ["js", "kl"])
@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_loss_falls_when_experts_disagree(bench, objective, granularity):
    params = LearnParams(objective=objective, granularity=granularity, steps=30, lr=0.1, l2=0.0, batch_size=ROWS,
                         samples=ROWS, eval_every=0, seed=SEED)
    events = run_steps(Learner(bench, params))
    first, last = mean_task_loss(events[0]), np.mean([mean_task_loss(e) for e in events[-5:]])
    assert first > 1e-2  # the experts disagree with the uniform start
    assert last < 0.8 * first, (first, last)


def test_periodic_eval_reports_what_the_collapse_panel_shows(bench):
    """Score, mean confidence, agreement with the expert and confidently-wrong share, recomputed in numpy
    from the merged and expert probabilities on the first ``limit`` evaluation rows."""
    from mergecore.data.metrics import score
    from mergecore.learn.learner import periodic_eval

    limit = 7
    source = FixedCoefs(as_matrix(bench, start_coefs(bench, "layer")))
    experts = bench.predict(bench.routing(), "evaluation", limit=limit)
    got = periodic_eval(bench, source, experts, limit)
    merged = bench.predict(source, "evaluation", limit=limit)
    for k, task in enumerate(bench.tasks):
        p, pe = merged[k].double().numpy(), experts[k].double().numpy()
        gold = np.asarray(task.evaluation.labels[:limit])
        conf, pred = p.max(-1), p.argmax(-1)
        assert got["confidence"][task.name] == pytest.approx(conf.mean(), rel=1e-6)
        assert got["agreement"][task.name] == pytest.approx((pred == pe.argmax(-1)).mean())
        assert got["confidently_wrong"][task.name] == pytest.approx(((conf >= 0.9) & (pred != gold)).mean())
        assert got["score"][task.name] == pytest.approx(score(task.metric, pred, gold))
    assert any(0.0 < v < 1.0 for v in got["confidence"].values())  # the fixture is neither flat nor one-hot
