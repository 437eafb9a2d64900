"""Compare computations: stability figures, score tables, and figure data from tiny stored runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_learn import tiny_bench

from mergecore.learn.params import LearnParams
from mergecore.runs.compare import (
    compare_runs,
    find_baselines,
    free_coefs,
    heatmaps,
    parse_run_ids,
    score_table,
    short_module_names,
    stability_table,
    taskwise,
)
from mergecore.runs.follow import thin_index
from mergecore.runs.runner import run_learning, run_static
from mergecore.runs.store import RunStore

# ----------------------------------------------------------------------------- hand-made coefficient sets


def test_stability_figures_on_hand_made_sets():
    sets = {"spread": np.array([[0.5, -0.2, 1.1], [0.3, -0.4, 0.0]]), "flat": np.array([[0.25, 0.25, 0.25]])}
    t = stability_table(sets)
    flat = sets["spread"].ravel()
    assert t.cell("spread", "range") == pytest.approx(1.1 - (-0.4))
    assert t.cell("spread", "std") == pytest.approx(float(np.sqrt(np.mean((flat - flat.mean()) ** 2))))
    assert t.cell("spread", "negatives") == 2  # 0.0 is not negative
    assert t.cell("spread", "count") == 6
    assert (t.cell("spread", "min"), t.cell("spread", "max")) == (-0.4, 1.1)
    assert t.cell("flat", "range") == 0 and t.cell("flat", "std") == 0 and t.cell("flat", "negatives") == 0
    text = t.to_text()
    assert "negatives" in text and text.splitlines()[1].split()[3] == "2"


def test_free_coefs_drop_repeated_rows():
    row = np.array([0.4, -0.1, -0.3])
    tiled = np.tile(row, (6, 1))
    assert np.array_equal(free_coefs(tiled, "task"), row[None])
    mods = [f"encoder.layer.{i}.attention.self.{p}" for i in range(3) for p in ("query", "value")]
    blocks = np.repeat(np.array([[1.0, -1.0], [2.0, 0.5], [-3.0, 0.0]]), 2, axis=0)
    assert np.array_equal(free_coefs(blocks, "block", mods), blocks[::2])
    assert free_coefs(blocks, "layer").shape == (6, 2)
    # negatives of a task-wise run are counted once per task, not once per module
    assert stability_table({"r": free_coefs(tiled, "task")}).cell("r", "negatives") == 2
    assert np.allclose(taskwise(blocks), blocks.mean(0))


def test_score_table_average_and_anp():
    experts = {"a": 80.0, "b": 50.0, "c": 40.0}
    run = {"a": 60.0, "b": 50.0, "c": 10.0}
    partial = {"a": 40.0, "c": 20.0}
    t = score_table({"experts": experts, "run": run, "partial": partial}, experts)
    assert t.index == ("a", "b", "c", "average", "ANP")
    assert t.cell("average", "run") == pytest.approx(40.0)
    assert t.cell("ANP", "run") == pytest.approx((60 / 80 + 1 + 10 / 40) / 3)
    assert t.cell("ANP", "experts") == pytest.approx(1.0)
    assert math.isnan(t.cell("b", "partial"))
    assert t.cell("average", "partial") == pytest.approx(30.0)
    assert t.cell("ANP", "partial") == pytest.approx((40 / 80 + 20 / 40) / 2)
    assert "ANP" not in score_table({"run": run}).index


def test_helpers():
    assert parse_run_ids(" b, a,zz,b ,", ["a", "b", "c"]) == ["b", "a"]
    assert parse_run_ids(None, ["a"]) == []
    names = short_module_names(["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
                                "bert.encoder.layer.1.attention.output.dense", "bert.pooler.dense"])
    assert names == ["enc.0.attn.query", "enc.0.attn.value", "enc.1.attn.out.dense", "pooler.dense"]
    assert len(set(short_module_names(["a.x.q", "a.y.q"]))) == 2
    idx = thin_index(2001, 500)
    assert len(idx) <= 500 and idx[0] == 0 and idx[-1] == 2000 and np.all(np.diff(idx) > 0)
    assert np.array_equal(thin_index(7), np.arange(7))


# ----------------------------------------------------------------------------- tiny stored runs


@pytest.fixture(scope="module")
def stored(tiny_setup, tmp_path_factory):
    bench = tiny_bench(tiny_setup)
    store = RunStore(tmp_path_factory.mktemp("ws"))
    common = dict(steps=4, lr=0.05, batch_size=4, samples=12, eval_every=2, eval_limit=6)
    ent, _ = run_learning(bench, LearnParams(objective="entropy", granularity="task", **common), store, name="ent")
    js, _ = run_learning(bench, LearnParams(objective="js", granularity="layer", **common), store, name="js")
    st, _ = run_static(bench, "task_arithmetic", None, store, name="ta")
    return bench, store, ent, js, st


def test_comparison_from_stored_runs(stored):
    bench, store, ent, js, st = stored
    L, K = bench.num_modules, bench.num_tasks
    cmp = compare_runs(store, [ent, js, st])
    labels = [store.get(i).label for i in (ent, js, st)]
    assert cmp.scores.columns == ("pre-trained", "experts", "uniform", *labels)
    for label, rid in zip(labels, (ent, js, st)):
        res = store.get(rid).result
        assert cmp.scores.cell("average", label) == pytest.approx(np.mean(list(res["scores"].values())))
        assert cmp.scores.cell("ANP", label) == pytest.approx(res["anp"])
    assert cmp.skipped == (labels[2],) and set(cmp.coef_runs) == set(labels[:2])
    assert cmp.coef_runs[labels[1]].shape == (L, K)
    assert np.allclose(cmp.coef_runs[labels[1]], store.get_tensors(js, "coefs")["coefs"].double().numpy(), atol=1e-6)
    assert cmp.stability.cell(labels[0], "count") == K and cmp.stability.cell(labels[1], "count") == L * K
    base, source = find_baselines([store.get(st)])
    assert source == st and base["experts"] == store.get(ent).result["baselines"]["experts"]


def test_heatmap_shapes(stored):
    """(Trajectories and collapse curves are drawn from ``runs.follow.RunSeries``: tests/test_follow.py,
    tests/test_app_compare.py.)"""
    bench, store, ent, js, _ = stored
    L, K = bench.num_modules, bench.num_tasks
    cmp = compare_runs(store, [ent, js])
    maps, zmin, zmax = heatmaps(cmp.coef_runs, cmp.modules, cmp.tasks)
    assert zmin == -zmax and zmax == pytest.approx(max(np.abs(c).max() for c in cmp.coef_runs.values()))
    for m in maps.values():
        assert m.z.shape == (L, K) and len(m.rows) == L and m.columns == tuple(bench.tasks.names)
        assert len(set(m.rows)) == L


def test_compare_cli(stored, capsys):
    from mergecore.cli import main

    _, store, ent, js, st = stored
    with pytest.raises(SystemExit) as exit_:
        main(["compare", ent, js, st, "--workspace", str(store.workspace), "--json"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    data = json.loads(out.strip().splitlines()[-1])
    cmp = compare_runs(store, [ent, js, st])
    labels = [store.get(i).label for i in (ent, js, st)]
    assert list(data["scores"]) == ["pre-trained", "experts", "uniform", *labels]
    assert data["anp"][labels[1]] == pytest.approx(store.get(js).result["anp"])
    assert data["stability"][labels[1]]["negatives"] == cmp.stability.cell(labels[1], "negatives")
    assert "coefficient stability" in out and "ANP" in out and labels[2] in out.split("static merges")[-1]
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "no-such-run", "--workspace", str(store.workspace)])
    assert exit_.value.code == 2
