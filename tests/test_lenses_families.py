"""Every lens on every reader: a classifier (tiny BERT), a seq2seq (tiny T5) and a decoder-only LM
(tiny Llama) workbench, each with a label task, a regression task (binned, float targets) and, where
the family can generate, a generative task. Each lens runs or refuses in one line; outputs are
checked against direct recomputations (single-expert predictions, hand-made masked means, nearest
bins)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mergecore.adapters import load_adapters
from mergecore.analysis import forward_lenses as fl
from mergecore.analysis import lenses
from mergecore.analysis.catalog import LENSES, compute_lens, headline, lens_tables, skipped_lines
from mergecore.analysis.lenses import LensParams
from mergecore.forward.coefs import FixedCoefs
from mergecore.errors import MergecoreError
from mergecore.forward.generative import GenParams
from mergecore.forward.model import MergeModel
from mergecore.forward.features import collect_features
from mergecore.runs.store import RunStore
from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.forward.workbench import Workbench

from test_learn import tiny_bench
from test_verbalizer import SENTS, SPECS, TINY, load, make_adapters
from test_verbalizer import tasks as verbalizer_tasks

PARAMS = LensParams(limit=4, samples=6, max_rows=3, n_bins=4, threshold=0.6)  # max_rows < rows: chunks
TARGETS = (0.1, 0.6, 0.45, 0.9)  # regression targets; bins centred at 0.25 / 0.75 -> nearest 0, 1, 0, 1
CENTRES = (0.25, 0.75)
PROMPTS = ("summarize: the cat sat on the mat", "translate: good morning", "a b c d e f")

pytestmark = pytest.mark.usefixtures("one_thread")



def regression_task(cal: tuple, ev: tuple, **kw) -> Task:
    return Task("score", ("low", "high"), Split(cal), Split(ev, TARGETS), metric="pearson_spearman",
                label_values=CENTRES, **kw)


def classifier_bench(tiny_setup) -> Workbench:
    """alpha (2 labels), beta (3 labels), gamma read as a 2-bin regression task."""
    bench = tiny_bench(tiny_setup)
    alpha, beta, gamma = bench.tasks
    reg = regression_task(gamma.calibration.inputs, gamma.evaluation.inputs[: len(TARGETS)])
    return Workbench(bench.adapters, TaskSet((alpha, beta, reg)), bench.model, bench.reader)


def lm_bench(name: str, root) -> Workbench:
    """Sentiment (label), score (regression) and gen (generative) on a tiny T5 / Llama."""
    from mergecore.forward.verbalizer import make_reader

    dirs = make_adapters(name, root, k=3)
    base, tok = load(name)
    sentiment = verbalizer_tasks()[0]
    cal = tuple((s,) for s in SENTS)
    reg = regression_task(cal, cal[: len(TARGETS)], prompt="Rate: {0}\nScore:", verbalizers=("low", "high"))
    gen = Task("gen", (), Split(tuple((p,) for p in PROMPTS)), Split(tuple((p,) for p in PROMPTS)), metric="rouge1")
    ts = TaskSet((sentiment, reg, gen))
    reader = make_reader(SPECS[name][0], ts, tok, base.config)
    mm = MergeModel(base, load_adapters(dirs), with_heads=False)
    return Workbench(load_adapters(dirs), ts, mm, reader, gen_params=GenParams(max_new_tokens=3, top_k=4))


@pytest.fixture(scope="module", params=["bert", "t5", "llama"])
def setup(request, tiny_setup, tmp_path_factory):
    name = request.param
    if name != "bert" and not TINY.is_dir():
        pytest.skip("tiny-random checkpoints not found in /work/shared/data")
    bench = classifier_bench(tiny_setup) if name == "bert" else lm_bench(name, tmp_path_factory.mktemp(name))
    store = RunStore(tmp_path_factory.mktemp("ws_" + name))
    run_id = store.create("half", "learned", {"method": "learned"})  # a stored merge: every adapter at 0.5
    store.put_tensors(run_id, "coefs", {"coefs": torch.full((bench.num_modules, bench.num_tasks), 0.5)})
    store.finish(run_id, "done", {})
    return SimpleNamespace(name=name, bench=bench, store=store, run=run_id)


def expert(bench, k: int) -> FixedCoefs:
    onehot = torch.zeros(bench.num_modules, bench.num_tasks)
    onehot[:, k] = 1.0
    return FixedCoefs(onehot)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum(-1)


def _js(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    return float((0.5 * _kl(p, m) + 0.5 * _kl(q, m)).mean())


# ----------------------------------------------------------------------------- every lens, one line


@pytest.mark.parametrize("what", LENSES)
def test_every_lens_runs_and_reports_skips_in_one_line(setup, what):
    s = setup
    lens = compute_lens(what, s.bench, s.store, s.run, PARAMS)
    line = headline(what, lens)
    assert "\n" not in line and "nan" not in line.lower()
    for stem, rows in lens_tables(what, lens).items():
        assert rows, stem
    generative = [t.name for t in s.bench.tasks if t.generative]
    if what in ("calibration", "representation", "subspaces"):
        assert [x["task"] for x in lens["skipped"]] == generative
        assert all("\n" not in x for x in skipped_lines(lens)) and len(skipped_lines(lens)) == len(generative)
    if what in ("calibration", "representation"):
        assert lens["tasks"] == [t.name for t in s.bench.tasks if not t.generative]


def test_forward_lenses_refuse_without_a_run_or_without_label_tasks(setup):
    s = setup
    with pytest.raises(MergecoreError, match="--run"):
        compute_lens("calibration", s.bench, s.store, None, PARAMS)
    if s.name == "bert":
        return
    gen = s.bench.tasks[2]
    only_gen = TaskSet(tuple(Task(f"g{k}", (), gen.calibration, gen.evaluation, metric="rouge1") for k in range(3)))
    bench = Workbench(s.bench.adapters, only_gen, s.bench.model, s.bench.reader)
    for lens_of in (fl.calibration_of, fl.representation_of):
        with pytest.raises(MergecoreError, match="every task is generative") as err:
            lens_of(bench, bench.uniform())
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- divergence


def test_divergence_matrix_equals_single_expert_predictions(setup):
    s = setup
    bench = s.bench
    lens = fl.divergence_lens(bench, s.store, PARAMS)
    K = bench.num_tasks
    per_expert = [bench.predict(expert(bench, j), "evaluation", PARAMS.limit) for j in range(K)]
    for i, task in enumerate(bench.tasks):
        assert lens["js"][i][i] == 0.0 and lens["kl"][i][i] == 0.0
        for j in range(K):
            if task.generative:  # token-level on expert i's greedy outputs (DivMerge App. B.1)
                assert lens["js"][i][j] >= 0.0 and lens["kl"][i][j] >= 0.0
                assert math.isnan(lens["scores"][i][j])  # no references: ROUGE-1 undefined
                continue
            p, q = per_expert[i][i], per_expert[j][i]  # expert i vs expert j on task i's inputs
            assert p.shape == (min(PARAMS.limit, len(task.evaluation)), task.num_labels)
            if i != j:
                assert lens["js"][i][j] == pytest.approx(_js(p, q), rel=1e-4, abs=1e-7)
                assert lens["kl"][i][j] == pytest.approx(float(_kl(p.double(), q.double()).mean()), rel=1e-4, abs=1e-7)
            if task.metric == "accuracy":
                gold = torch.tensor(task.evaluation.labels[: len(q)])
                assert lens["scores"][i][j] == pytest.approx(100.0 * float((q.argmax(-1) == gold).double().mean()))
    if any(t.generative for t in bench.tasks):
        assert lens["generative"] == ["gen"]
        assert max(lens["js"][2][j] for j in range(K)) > 0.0  # the other experts do differ


# ----------------------------------------------------------------------------- OSRM features


@torch.no_grad()
def test_features_are_masked_means_one_row_per_example(setup):
    s = setup
    bench = s.bench
    feats = collect_features(bench, PARAMS.samples, max_rows=4)  # two chunks, padded differently
    k, task = 0, bench.tasks[0]
    n = min(PARAMS.samples, len(task.calibration))
    enc = bench.encoded(k, "calibration", PARAMS.samples)
    lengths = [int(bench.reader.batch([(k, enc, torch.tensor([i]))], None)[1]["attention_mask"].sum()) for i in range(4)]
    ex = min(range(4), key=lengths.__getitem__)  # the shortest of the first chunk: padded there
    assert lengths[ex] < max(lengths)
    seen: dict = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args: seen.__setitem__(mod.name, args[0].clone()))
             for layer in bench.model.layers]
    try:  # example ``ex`` alone: no padding at all, so a plain mean over its tokens
        bench.model.set_source(bench.pretrained())
        segments, inputs = bench.reader.batch([(k, enc, torch.tensor([ex]))], None)
        bench.model(segments, **inputs)
    finally:
        for h in hooks:
            h.remove()
    for module, per_task in feats.items():
        assert sorted(per_task) == [i for i, t in enumerate(bench.tasks) if not t.generative]
        for i in per_task:
            assert per_task[i].shape == (min(PARAMS.samples, len(bench.tasks[i].calibration)), seen[module].shape[-1])
        x = seen[module].double()
        ref = x.reshape(1, -1, x.shape[-1]).mean(1)[0]
        torch.testing.assert_close(per_task[k][ex].double(), ref, atol=1e-4, rtol=1e-4)
    assert len(feats[bench.model.layers[0].name][k]) == n  # never n * C label rows


def test_interference_uses_one_row_per_example(setup):
    s = setup
    bench = s.bench
    lens = lenses.subspaces_lens(bench, s.store, PARAMS)
    feats = collect_features(bench, PARAMS.samples, PARAMS.max_rows)
    module = bench.adapters.modules[0]
    for i, task in enumerate(bench.tasks):
        for j, f in enumerate(bench.adapters.factors(module)):
            got = lens["interference"][module][i][j]
            if task.generative or f is None:
                assert math.isnan(got)
                continue
            H = feats[module][i].double()
            ref = float(torch.linalg.matrix_norm(f.delta() @ H.T)) / math.sqrt(len(H))
            assert got == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------------------- subspace summaries


def test_subspace_averages_skip_undefined_modules(setup):
    s = setup
    lens = lenses.subspaces_lens(s.bench, s.store, PARAMS)
    for key, summary in lens["summary"].items():
        assert summary["defined"] + summary["undefined"] == summary["total"]
        finite = []
        for m in lens["modules"]:
            M = torch.tensor(lens[key].get(m, [[math.nan]]), dtype=torch.float64)
            off = M[~torch.eye(len(M), dtype=torch.bool)]
            off = off[torch.isfinite(off)]
            if off.numel():
                finite.append(float(off.mean()))
        assert summary["defined"] == len(finite)
        assert summary["mean"] == pytest.approx(sum(finite) / len(finite))
    line = headline("subspaces", lens)
    if s.name == "bert":  # only beta adapts the 'dense' layers: those modules have no off-diagonal pair
        assert lens["summary"]["b_overlap"]["undefined"] > 0
        assert f"{lens['summary']['b_overlap']['undefined']} undefined" in line
    assert "mean over" in line and "nan" not in line.lower()


def test_describe_mean_when_nothing_is_defined():
    summary = lenses.offdiag_summary({"m": [[1.0, math.nan], [math.nan, 1.0]]}, ["m", "absent"])
    assert summary == {"mean": summary["mean"], "defined": 0, "total": 1, "undefined": 1} and math.isnan(summary["mean"])
    assert lenses.describe_mean(summary) == "undefined (0 of 1 modules defined)"


# ----------------------------------------------------------------------------- representation


def test_representation_reads_every_stack(setup):
    s = setup
    bench = s.bench
    own = fl.representation_of(bench, bench.routing(), "evaluation", PARAMS.limit, PARAMS.max_rows)
    for t in own["tasks"]:
        assert own["bias"][t] == [0.0] * len(own["layers"])  # an expert against itself
    rep = fl.representation_lens(bench, s.store, s.run, PARAMS)
    cfg = bench.model.model.config
    if s.name == "t5":
        assert len(rep["layers"]) == cfg.num_layers + 1 + cfg.num_decoder_layers + 1
        assert rep["layers"][0] == "encoder embeddings" and "decoder embeddings" in rep["layers"]
    else:
        assert len(rep["layers"]) == cfg.num_hidden_layers + 1
    for t in rep["tasks"]:
        assert len(rep["bias"][t]) == len(rep["layers"]) and rep["bias"][t][0] == 0.0 and rep["mean"][t] > 0.0


# ----------------------------------------------------------------------------- calibration


def test_regression_calibration_uses_nearest_bins(setup):
    s = setup
    bench = s.bench
    lens = fl.calibration_lens(bench, s.store, s.run, PARAMS)
    k = bench.tasks.names.index("score")
    task = bench.tasks[k]
    nearest = [min(range(len(CENTRES)), key=lambda c: abs(y - CENTRES[c])) for y in TARGETS]
    assert nearest == [0, 1, 0, 1]  # truncation would give [0, 0, 0, 0]
    merged = bench.predict(fl.run_source(bench, s.store, s.run), "evaluation", PARAMS.limit)[k]
    conf, pred = merged.double().max(-1)
    gold = torch.tensor(nearest)
    rows = [e for e in lens["examples"] if e["task"] == "score"]
    assert [e["label"] for e in rows] == [task.label_names[c] for c in nearest]
    assert [e["correct"] for e in rows] == (pred == gold).tolist()
    summary = lens["summary"]["score"]
    assert summary["accuracy"] == pytest.approx(float((pred == gold).double().mean()))
    assert summary["confidently_wrong"] == pytest.approx(float(((conf >= PARAMS.threshold) & (pred != gold)).double().mean()))
    count = [0] * PARAMS.n_bins
    for c in conf.tolist():
        count[min(int(c * PARAMS.n_bins + 1e-6), PARAMS.n_bins - 1)] += 1
    assert lens["bins"]["score"]["count"] == count
