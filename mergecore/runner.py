"""Runs: a learning job or a static merge, recorded in the RunStore with its events and results.

``run_learning`` is what the CLI and the app's background jobs both call, so a run started in
either place is the same run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch

from .coefs import FixedCoefs
from .evaluate import anp, average, baselines, evaluate
from .learn import Learner, LearnParams
from .runs import RunStore


def bench_config(bench) -> dict:
    """What identifies the inputs of a run: adapters (with content hashes), tasks (with data hashes), modules."""
    return {
        "base_model": bench.base_name,
        "adapters": [{"name": a.name, "source": a.source, "sha256": a.sha256} for a in bench.adapters.adapters],
        "tasks": [{"name": t.name, "fingerprint": t.fingerprint(), "metric": t.metric} for t in bench.tasks],
        "modules": bench.adapters.modules,
    }


def cached_baselines(bench) -> dict[str, dict[str, float]]:
    """Pre-trained / experts / uniform scores, computed once per workbench."""
    if not hasattr(bench, "_baselines"):
        bench._baselines = baselines(bench)
    return bench._baselines


def summarize(bench, scores: dict[str, float]) -> dict:
    base = cached_baselines(bench)
    return {"scores": scores, "average": average(scores), "anp": anp(scores, base["experts"]),
            "uniform": base["uniform"], "baselines": base}


def create_learning_run(bench, params: LearnParams, store: RunStore, name: str | None = None) -> str:
    name = name or f"{params.objective}-{params.granularity}"
    return store.create(name, "learned", {"method": "learned", "params": asdict(params), **bench_config(bench)})


def run_learning(bench, params: LearnParams, store: RunStore | None = None, name: str | None = None,
                 on_event: Callable[[str, int, dict], None] | None = None, stop=None,
                 start: torch.Tensor | None = None, run_id: str | None = None) -> tuple[str | None, dict]:
    """Learn coefficients, evaluate them, and record everything; returns (run id, result).

    ``run_id``: a run already created with ``create_learning_run`` (the app creates it first so
    the page can follow it before the first step)."""
    params = params.validate()
    if store and run_id is None:
        run_id = create_learning_run(bench, params, store, name)

    def sink(kind: str, step: int, payload: dict) -> None:
        if store:
            store.add_event(run_id, kind, step, payload)
        if on_event:
            on_event(kind, step, payload)

    try:
        res = Learner(bench, params, start=start).run(sink, stop)
        scores = evaluate(bench, FixedCoefs(res.coefs))
        result = {**summarize(bench, scores), "status": res.status, "message": res.message,
                  "steps": res.steps_done, "seconds": res.seconds, "coefs": res.coefs.tolist()}
    except Exception as exc:
        if store:
            store.finish(run_id, "failed", {}, f"{type(exc).__name__}: {exc}")
        raise
    if store:
        store.put_tensors(run_id, "coefs", {"coefs": res.coefs})
        store.finish(run_id, res.status, result, res.message)
    return run_id, result


def record_baselines(bench, store: RunStore) -> str:
    """Store pre-trained / experts / uniform as one 'baseline' run (Compare shows it)."""
    t0 = time.perf_counter()
    base = cached_baselines(bench)
    run_id = store.create("baselines", "baseline", {"method": "baselines", **bench_config(bench)})
    store.finish(run_id, "done", {"baselines": base, "seconds": time.perf_counter() - t0})
    return run_id
