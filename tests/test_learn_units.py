"""Learner pieces without a model run: periodic evaluation on hand-made probabilities, presets,
parameter checks, the precision switch and where the spectral source lives.

References are hand-derived (the probabilities below are chosen so every number can be read off)
and recomputed in numpy / scipy; nothing is compared with a number the code printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.errors import MergecoreError
from mergecore.learn.learner import Learner, periodic_eval, precision_context
from mergecore.learn.objectives import OBJECTIVES
from mergecore.learn.params import GRANULARITIES, L2_TARGETS, PRESETS, LearnParams, apply_preset

LIMIT = 5


class StubBench:
    """What periodic_eval reads from a Workbench: tasks, label_tasks and predict (recorded, honouring limit)."""

    def __init__(self, tasks: list[Task], probs: list[torch.Tensor | None]):
        self.tasks, self.probs, self.calls = TaskSet(tuple(tasks)), probs, []

    @property
    def label_tasks(self) -> list[int]:
        return [k for k, t in enumerate(self.tasks) if not t.generative]

    def predict(self, source, split="evaluation", limit=None):
        self.calls.append((source, split, limit))
        return [None if p is None else p[:limit] for p in self.probs]


def _split(n: int, labels=None) -> Split:
    return Split(tuple((f"x{i}",) for i in range(n)), labels)


def eval_fixture():
    """An accuracy task, a generative task (no label probabilities) and a regression task (STS-B style)."""
    acc = Task("acc", ("a", "b", "c"), _split(4), _split(6, (0, 1, 2, 0, 1, 2)))
    gen = Task("gen", (), _split(3), _split(3), metric="rouge1")
    reg = Task("reg", ("lo", "hi"), _split(4), _split(6, (0.2, 0.9, 0.4, 0.7, 0.1, 0.5)), metric="pearson_spearman",
               label_values=(0.0, 1.0))
    p_acc = torch.tensor([[0.9, 0.05, 0.05],  # conf exactly 0.9, right
                          [0.9, 0.05, 0.05],  # conf exactly 0.9, wrong (gold 1): confidently wrong at the boundary
                          [0.2, 0.3, 0.5],  # right, unsure
                          [0.05, 0.95, 0.0],  # wrong (gold 0), confident
                          [0.4, 0.35, 0.25],  # wrong (gold 1), unsure
                          [0.0, 0.0, 1.0]])  # beyond the limit
    p_reg = torch.tensor([[0.95, 0.05], [0.02, 0.98], [0.6, 0.4], [0.3, 0.7], [0.99, 0.01], [0.5, 0.5]])
    e_acc = torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    e_reg = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    return StubBench([acc, gen, reg], [p_acc, None, p_reg]), [e_acc, None, e_reg]


def test_periodic_eval_on_hand_made_probabilities():
    bench, experts = eval_fixture()
    source = object()
    got = periodic_eval(bench, source, experts, LIMIT)
    assert bench.calls == [(source, "evaluation", LIMIT)]  # the merge under evaluation, its first LIMIT rows
    assert set(got) == {"score", "confidence", "agreement", "confidently_wrong"}
    for key in got:
        assert set(got[key]) == {"acc", "reg"}, key  # the generative task has no label confidence
    # accuracy task, read off the table above: right rows 0 and 2; confidences 0.9, 0.9, 0.5, 0.95, 0.4;
    # expert argmax 1, 0, 2, 1, 2 vs merged 0, 0, 2, 1, 0; confidently wrong rows 1 (conf == 0.9) and 3.
    assert got["score"]["acc"] == pytest.approx(40.0)
    assert got["confidence"]["acc"] == pytest.approx((0.9 + 0.9 + 0.5 + 0.95 + 0.4) / 5, rel=1e-6)
    assert got["agreement"]["acc"] == pytest.approx(3 / 5)
    assert got["confidently_wrong"]["acc"] == pytest.approx(2 / 5)  # 'conf >= 0.9': the 0.9 row counts
    # regression task: the score is Pearson/Spearman of the expected value; a regression row is never 'wrong'
    p = bench.probs[2][:LIMIT].double().numpy()
    pred, gold = p @ np.array([0.0, 1.0]), np.array([0.2, 0.9, 0.4, 0.7, 0.1])
    want = 100 * (stats.pearsonr(pred, gold)[0] + stats.spearmanr(pred, gold)[0]) / 2
    assert got["score"]["reg"] == pytest.approx(want, rel=1e-6)
    assert got["confidence"]["reg"] == pytest.approx(p.max(1).mean(), rel=1e-6)
    assert got["agreement"]["reg"] == pytest.approx((p.argmax(1) == experts[2].numpy().argmax(1)).mean())
    assert (p.max(1) >= 0.9).sum() == 3  # confident rows whose argmax differs from int(gold) = 0 exist ...
    assert got["confidently_wrong"]["reg"] == 0.0  # ... and still do not count
    assert all(isinstance(v, float) for d in got.values() for v in d.values())


# ----------------------------------------------------------------------------- presets and parameters


def test_apply_preset_layers_over_the_given_params():
    base = LearnParams(seed=7, eval_every=3, steps=9)
    assert apply_preset(base, None) is base and apply_preset(base, "") is base
    got = apply_preset(base, "divmerge")
    assert (got.seed, got.eval_every) == (7, 3)  # fields the preset does not name are kept
    assert {f.name: getattr(got, f.name) for f in dataclasses.fields(got) if f.name in PRESETS["divmerge"]} == \
        PRESETS["divmerge"]
    with pytest.raises(MergecoreError, match=r"^unknown preset 'nope'; valid presets: sourcejs, divmerge, "
                                             r"adamerging, loradv$"):
        apply_preset(base, "nope")


def test_every_parameter_has_help_and_checked_choices():
    fields = {f.name: f for f in dataclasses.fields(LearnParams)}
    for name, f in fields.items():
        assert isinstance(f.metadata["help"], str) and len(f.metadata["help"]) > 10, name
    assert fields["objective"].metadata["choices"] == tuple(OBJECTIVES)
    assert fields["granularity"].metadata["choices"] == GRANULARITIES
    assert fields["l2_target"].metadata["choices"] == L2_TARGETS
    from mergecore.cli import build_parser

    learn = build_parser()._subparsers._group_actions[0].choices["learn"]
    helps = {a.dest: a.help for a in learn._actions}
    assert helps["lr"].startswith(fields["lr"].metadata["help"]) and "(default: 0.02)" in helps["lr"]


@pytest.mark.parametrize("change, message", [
    (dict(objective="mse"), None),  # the objective's own message (objectives.py)
    (dict(granularity="row"), r"^unknown granularity 'row'; valid: task, layer, block, spectral$"),
    (dict(steps=0), r"^steps must be at least 1 \(got 0\); set --steps to a whole number >= 1$"),
    (dict(samples=0), r"^samples must be at least 1 \(got 0\); set --samples to a whole number >= 1$"),
    (dict(batch_size=-2), r"^batch_size must be at least 1 \(got -2\); set --batch-size to a whole number >= 1$"),
    (dict(lr=0.0), r"^lr must be a positive number \(got 0.0\); set --lr to a finite number > 0$"),
    (dict(lr=-0.1), r"^lr must be a positive number \(got -0.1\); set --lr to a finite number > 0$"),
    (dict(lr=math.inf), r"^lr must be a positive number \(got inf\); set --lr to a finite number > 0$"),
    (dict(lr=math.nan), r"^lr must be a positive number \(got nan\); set --lr to a finite number > 0$"),
    (dict(l2_target="origin"), r"^unknown l2_target 'origin'; valid: uniform, start$"),
    (dict(clamp=True, softmax=True), r"clamp and softmax"),
    (dict(iterations=0), r"^iterations must be at least 1 \(got 0\); set --iterations to a whole number >= 1$"),
])
def test_validate_names_the_bad_parameter(change, message):
    with pytest.raises(MergecoreError, match=message or "mse"):
        LearnParams(**change).validate()


def test_validate_accepts_the_smallest_values_and_returns_itself():
    p = LearnParams(steps=1, samples=1, batch_size=1, iterations=1, lr=1e-12)
    assert p.validate() is p
    assert LearnParams(clamp=True).validate().clamp and LearnParams(softmax=True).validate().softmax


def test_start_value_is_one_over_k_unless_init_is_given():
    assert LearnParams().start_value(4) == 0.25
    assert LearnParams(init=0.0).start_value(4) == 0.0  # 0 is a valid start, not 'unset'
    assert LearnParams(init=0.7).start_value(3) == 0.7


# ----------------------------------------------------------------------------- precision


@contextlib.contextmanager
def _tf32_flags_restored():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.filterwarnings("ignore:.*CUDA is not available.*")
@pytest.mark.parametrize("precision, tf32, autocast", [("auto", True, False), ("fp32", False, False),
                                                        ("bf16", True, True)])
def test_precision_context_on_cuda(precision, tf32, autocast):
    """The switches it sets for a CUDA device (built, not entered: this runs on CPU-only machines too)."""
    with _tf32_flags_restored():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
        ctx = precision_context(precision, torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    if autocast:
        assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    else:
        assert isinstance(ctx, contextlib.nullcontext)


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_precision_context_on_cpu_changes_nothing(precision):
    with _tf32_flags_restored():
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        ctx = precision_context(precision, torch.device("cpu"))
        assert isinstance(ctx, contextlib.nullcontext)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# ----------------------------------------------------------------------------- spectral source placement


def test_spectral_source_lives_on_the_bench_device(tiny_setup):
    """Singular vectors and gains go to the bench's device ('meta' here: a device other than the CPU the
    merge is computed on, available without an accelerator); the L2 anchor is gains of one there too."""
    from mergecore.adapters import load_adapters
    from mergecore.forward.generative import GenParams
    from mergecore.merged import coefs_to_merge

    adapters = load_adapters(tiny_setup[1])
    K, L = len(adapters.names), len(adapters.modules)
    bench = SimpleNamespace(adapters=adapters, num_tasks=K, num_modules=L, gen_params=GenParams(),
                            device=torch.device("meta"))
    merge = coefs_to_merge(adapters, torch.full((L, K), 1.0 / K))
    learner = Learner(bench, LearnParams(granularity="spectral"), start_merge=merge)
    assert learner.source.gamma.device.type == "meta" and learner.gamma0.device.type == "meta"
    assert all(u.device.type == "meta" for u in learner.source.U.values())
    assert learner.gamma0.shape == learner.source.gamma.shape and not learner.gamma0.requires_grad


# ----------------------------------------------------------------------------- references and sources


def test_references_refuse_label_objectives_on_generative_tasks():
    from mergecore.learn.learner import references

    label = Task("acc", ("a", "b"), _split(2, (0, 1)), _split(2, (0, 1)))
    gens = [Task(f"gen{k}", (), _split(2), _split(2), metric="rouge1") for k in range(2)]
    bench = SimpleNamespace(tasks=TaskSet((label, *gens)), num_tasks=3, device=torch.device("cpu"))
    with pytest.raises(MergecoreError, match=r"^task gen0 is generative; it learns with js or kl on the expert's "
                                             r"outputs \(got entropy\)$"):
        references(bench, LearnParams(objective="entropy"))


def test_references_need_labels_for_ce():
    from mergecore.learn.learner import references

    labeled = Task("acc", ("a", "b"), _split(2, (0, 1)), _split(2, (0, 1)))
    unlabeled = Task("raw", ("a", "b"), _split(2), _split(2, (0, 1)))
    bench = SimpleNamespace(tasks=TaskSet((labeled, unlabeled)), num_tasks=2, device=torch.device("cpu"))
    with pytest.raises(MergecoreError, match=r"^the ce objective needs labels; task raw has an unlabeled calibration "
                                             r"split$"):
        references(bench, LearnParams(objective="ce"))


def test_make_source_refuses_spectral_and_unknown_granularities():
    from mergecore.learn.learner import make_source

    bench = SimpleNamespace(num_modules=2, adapters=SimpleNamespace(modules=["a.layer.0.q", "a.layer.1.q"]))
    for name in ("spectral", "row"):
        with pytest.raises(MergecoreError, match=rf"^unknown granularity '{name}'; valid: task, layer, block, "
                                                 r"spectral$"):
            make_source(bench, name, torch.ones(2))


def test_label_references_live_on_the_bench_device():
    """Label ids go to the bench's device ('meta': not the CPU they come from); expert probabilities are
    allocated there by ExpertReferences.fill (the learner on a GPU: tests/test_cuda.py)."""
    from mergecore.forward.generative import GenParams
    from mergecore.learn.learner import references

    tasks = [Task(f"t{k}", ("a", "b"), _split(3, (0, 1, 1)), _split(2, (0, 1))) for k in range(2)]
    bench = SimpleNamespace(tasks=TaskSet(tuple(tasks)), num_tasks=2, device=torch.device("meta"),
                            gen_params=GenParams())
    refs = references(bench, LearnParams(objective="ce", samples=2, labeled=3))
    assert all(r.device.type == "meta" for r in refs) and [tuple(r.shape) for r in refs] == [(3,)] * 2
