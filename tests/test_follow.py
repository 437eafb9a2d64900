"""Following a run live (mergecore/runs/follow.py): only new events are read, and what is kept per step is
what the charts draw, checked against the events themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mergecore.runs import follow
from mergecore.runs.follow import RunSeries, thin
from mergecore.runs.store import RunStore


def step(store, run_id, k, coefs):
    store.add_event(run_id, "step", k, {"loss": 1.0 / k, "task_loss": {"a": 0.5 / k, "b": None}, "coefs": coefs})


def test_update_reads_only_the_new_events_and_keeps_what_charts_draw(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run_id = store.create("js-layer", "learned", {"params": {"steps": 4}})
    seen = []
    real = store.events_since
    monkeypatch.setattr(store, "events_since", lambda rid, after=-1: seen.append(after) or real(rid, after))
    s = RunSeries(run_id)
    store.add_event(run_id, "stage", 0, {"stage": "references", "text": "Stage 1"})
    assert s.update(store) and s.stage == "Stage 1" and s.stage_key == "references" and not s.steps
    layer = [[0.1, 0.3], [0.3, 0.5], [0.2, 0.4]]  # (L=3, K=2): the chart draws the mean over modules
    step(store, run_id, 1, layer)
    step(store, run_id, 2, [[0.5, 0.5]] * 3)
    assert s.update(store)
    assert s.steps == [1, 2] and s.loss == [1.0, 0.5] and s.total_steps == 4 and s.steps_done == 2
    assert np.allclose(s.coefs[0], [0.2, 0.4]) and np.allclose(s.coefs[1], [0.5, 0.5])
    assert s.task_loss["a"] == [0.5, 0.25] and all(math.isnan(x) for x in s.task_loss["b"])  # null -> NaN
    assert not s.update(store)  # nothing new: nothing changed
    store.add_event(run_id, "eval", 2, {"score": {"a": 60.0, "b": None}, "confidence": {"a": 0.5, "b": 0.7},
                                        "confidently_wrong": {"a": 0.0, "b": 0.2}})
    assert s.update(store)
    assert s.evals == [(2, {"score": 60.0, "confidence": pytest.approx(0.6), "confidently_wrong": pytest.approx(0.1)})]
    assert seen == [-1, 0, 2, 2]  # every read starts after the last event seen (seq 0 = the stage event)
    store.finish(run_id, "done", {"scores": {"a": 61.0}})
    assert s.update(store) and s.done and s.result == {"scores": {"a": 61.0}} and s.label == f"js-layer:{run_id[-6:]}"


def test_task_wise_and_spectral_coefficients(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("t", "learned", {"params": {"steps": 2}})
    step(store, run_id, 1, [0.25, 0.75])  # task-wise (K,)
    s = RunSeries(run_id)
    s.update(store)
    assert np.allclose(s.coefs[0], [0.25, 0.75])
    spectral = store.create("s", "learned", {"params": {"steps": 2}})
    step(store, spectral, 1, [[1.0], [3.0]])  # spectral: mean gain per module (L, 1)
    s = RunSeries(spectral)
    s.update(store)
    assert np.allclose(s.coefs[0], [2.0])


def test_static_runs_have_no_step_count(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("ties", "static", {"method": "ties", "params": {"density": 0.2}})
    s = RunSeries(run_id)
    s.update(store)
    assert s.total_steps == 0 and s.status == "running"


def test_thin_caps_points_evenly_and_keeps_the_ends():
    x = np.arange(1, 10_001)
    tx, ty = thin(x, x * 2.0)
    assert len(tx) == follow.MAX_POINTS and tx[0] == 1 and tx[-1] == 10_000 and np.array_equal(ty, tx * 2.0)
    assert np.all(np.diff(tx) > 0) and np.diff(tx).max() - np.diff(tx).min() <= 1  # evenly spaced
    short = thin([1, 2, 3], [4, 5, 6])
    assert short[0].tolist() == [1, 2, 3] and short[1].tolist() == [4.0, 5.0, 6.0]


def test_stage_progress_from_rows(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("js", "learned", {"params": {"steps": 2}})
    store.add_event(run_id, "stage", 0, {"stage": "references", "done": 256, "rows": 640, "text": "Stage 1, 256/640"})
    s = RunSeries(run_id)
    s.update(store)
    assert s.stage_progress == pytest.approx(0.4) and s.stage == "Stage 1, 256/640"
    store.add_event(run_id, "stage", 0, {"stage": "learning", "text": "Stage 2"})
    s.update(store)
    assert s.stage_progress == 0.0 and s.stage_key == "learning"


def test_progress_is_the_stage_until_steps_come_then_the_step_count(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("js", "learned", {"params": {"steps": 4}})
    s = RunSeries(run_id)
    s.update(store)
    assert s.progress() == (0.0, f"js:{run_id[-6:]}: starting a worker process (running)")
    store.add_event(run_id, "stage", 0, {"stage": "references", "done": 3, "rows": 12, "text": "Stage 1, 3/12 rows"})
    s.update(store)
    assert s.progress() == (0.25, f"js:{run_id[-6:]}: Stage 1, 3/12 rows (running)")
    step(store, run_id, 1, [0.5, 0.5])
    store.add_event(run_id, "stage", 0, {"stage": "evaluating", "text": "final evaluation"})
    s.update(store)
    assert s.progress() == (0.25, f"js:{run_id[-6:]}: step 1/4 (running), final evaluation")
    for k in (2, 3, 4, 5):  # more steps than planned (a resumed count) never overflow the bar
        step(store, run_id, k, [0.5, 0.5])
    store.finish(run_id, "done", {})
    s.update(store)
    assert s.progress() == (1.0, f"js:{run_id[-6:]}: step 5/4 (done)")
    one = store.create("one", "learned", {"params": {"steps": 1}})
    step(store, one, 1, [0.5, 0.5])
    store.finish(one, "failed", {}, "gradient became nan at step 2")
    s = RunSeries(one)
    s.update(store)
    assert s.progress()[0] == 1.0 and s.delta()["message"] == "gradient became nan at step 2"


def test_delta_is_what_a_chart_that_drew_some_of_the_run_lacks(tmp_path):
    import json

    store = RunStore(tmp_path)
    run_id = store.create("js", "learned", {"params": {"steps": 3}})
    for k in (1, 2, 3):
        step(store, run_id, k, [[0.1 * k, 0.3], [0.3 * k, 0.5]])
    store.add_event(run_id, "eval", 2, {"score": {"a": 60.0}, "confidence": {"a": 0.5},
                                        "confidently_wrong": {"a": 0.25}})
    s = RunSeries(run_id)
    s.update(store)
    full = s.delta()
    assert json.loads(json.dumps(full, allow_nan=False)) == full  # valid JSON: NaN became null
    assert full["steps"] == [1, 2, 3] and full["loss"] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert full["task_loss"] == {"a": [0.5, 0.25, pytest.approx(0.5 / 3)], "b": [None, None, None]}
    assert full["coefs"] == [pytest.approx([0.2 * k, 0.4]) for k in (1, 2, 3)]  # mean over modules, per task
    assert full["evals"] == [[2, 60.0, 0.5, 0.25]]
    assert (full["id"], full["status"], full["done"]) == (run_id, "running", False)
    later = s.delta(2, 1)
    assert later["steps"] == [3] and later["loss"] == [pytest.approx(1 / 3)] and later["task_loss"]["b"] == [None]
    assert later["coefs"] == [pytest.approx([0.6, 0.4])] and later["evals"] == []
    assert later["progress"] == 1.0 and later["text"].endswith("step 3/3 (running)")
    assert s.delta(3, 1)["steps"] == [] and s.delta(3, 1)["coefs"] == []
