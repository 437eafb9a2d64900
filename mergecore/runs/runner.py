"""Runs: a learning job or a static merge, recorded in the RunStore with its events and results.

``run_learning`` is what the CLI and the app's background jobs both call, so a run started in
either place is the same run.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import torch

from mergecore.errors import MergecoreError
from mergecore.forward.coefs import FixedCoefs
from mergecore.forward.evaluate import anp, average, baselines, evaluate
from mergecore.forward.features import collect_features
from mergecore.forward.spec import BASELINES, LEARNED, bench_config, bench_key
from mergecore.forward.workbench import Workbench
from mergecore.learn.learner import Learner
from mergecore.learn.params import LearnParams
from mergecore.merged import MergedSource, coefs_to_merge, merge_to_tensors
from mergecore.merges import METHODS, get_method, merge_adapters
from mergecore.numbers import as_float, dumps
from mergecore.runs.folder import run_merge
from mergecore.runs.store import RunStore, Store, StoreError


def cached_baselines(bench: Workbench, store: Store | None = None) -> dict[str, dict[str, float]]:
    """Pre-trained / experts / uniform scores: once per workbench, and once per workspace when a store is given."""
    if bench.baselines is None:
        cached = store.cache_get(bench_key(bench)) if store else None
        if cached:  # undefined scores are stored as null: NaN again in memory
            bench.baselines = {k: {t: as_float(v) for t, v in col.items()} for k, col in json.loads(cached).items()}
        else:
            bench.baselines = baselines(bench)
        if store and not cached:
            store.cache_put(bench_key(bench), dumps(bench.baselines).encode())
    return bench.baselines


def summarize(bench: Workbench, scores: dict[str, float], store: Store | None = None) -> dict:
    base = cached_baselines(bench, store)
    return {"scores": scores, "average": average(scores), "anp": anp(scores, base["experts"]),
            "uniform": base["uniform"], "baselines": base}


def store_stopped(store: RunStore, run_id: str, exc: StoreError, when: str) -> StoreError:
    """A run whose store failed mid-run (a full disk, a lock held too long, ...) stops there: it is marked
    'interrupted' saying why if the store still takes that write, else by the store's next open once this process
    has ended. The error returned says which, in one line."""
    why = "the disk holding the run store was full" if exc.kind == "full" else f"the run store failed ({exc.problem})"
    try:
        store.finish(run_id, "interrupted", {}, f"{why} {when}: events up to there are kept")
        marked = "it is marked interrupted"
    except StoreError:
        marked = "it could not be marked interrupted either: the next open of the store will, once this process has ended"
    return StoreError(exc.kind, exc.path, f"{exc.problem} (run {run_id} stopped {when}, {marked})", exc.fix)


def create_learning_run(bench: Workbench, params: LearnParams, store: RunStore, name: str | None = None) -> str:
    name = name or f"{params.objective}-{params.granularity}"
    return store.create(name, "learned", bench_config(bench, LEARNED, params))


def run_learning(bench: Workbench, params: LearnParams, store: RunStore | None = None, name: str | None = None,
                 on_event: Callable[[str, int, dict], None] | None = None, stop=None,
                 start: torch.Tensor | None = None, run_id: str | None = None) -> tuple[str | None, dict]:
    """Learn coefficients, evaluate them, and record everything; returns (run id, result).

    ``run_id``: a run already created with ``create_learning_run`` (the app creates it first so
    the page can follow it before the first step)."""
    params = params.validate()
    if store:
        store.check_writable()  # a read-only store is refused before any work
    start_coefs, start_merge = resolve_start(bench, params, store, start)  # bad input fails before any write
    if store and run_id is None:
        run_id = create_learning_run(bench, params, store, name)
    stored = {"step": 0}  # the last step whose event is stored

    def sink(kind: str, step: int, payload: dict) -> None:
        if store:
            store.add_event(run_id, kind, step, payload)
        if kind == "step":
            stored["step"] = step
        if on_event:
            on_event(kind, step, payload)

    try:
        res = Learner(bench, params, start=start_coefs, start_merge=start_merge).run(sink, stop)
        sink("stage", res.steps_done, {"stage": "evaluating", "text": "scoring the merge on the evaluation split"
                                       + ("" if bench.baselines else " (and the baselines, once per workspace)")})
        result = _learned_result(bench, res, store)
        if store:
            if res.merge is not None:
                store.put_tensors(run_id, "merged", merge_to_tensors(res.merge))
                store.put_tensors(run_id, "spectral", res.spectral)
            else:
                store.put_tensors(run_id, "coefs", {"coefs": res.coefs})
            store.finish(run_id, res.status, result, res.message)
    except StoreError as exc:
        raise store_stopped(store, run_id, exc, f"after step {stored['step']}" if stored["step"] else
                            "before its first step") from exc
    except Exception as exc:
        if store:
            store.finish(run_id, "failed", {}, f"{type(exc).__name__}: {exc}")
        raise
    return run_id, result


def _learned_result(bench: Workbench, res, store: RunStore | None) -> dict:
    source = MergedSource(res.merge, bench.device) if res.merge is not None else FixedCoefs(res.coefs)
    result = {**summarize(bench, evaluate(bench, source), store), "status": res.status, "message": res.message,
              "steps": res.steps_done, "seconds": res.seconds}
    if res.merge is None:
        result["coefs"] = res.coefs.tolist()
    else:
        result["gains"] = {k: v.tolist() for k, v in res.spectral.items() if k.startswith("scale::")}
    return result


def resolve_start(bench: Workbench, params: LearnParams, store: Store | None, start: torch.Tensor | None):
    """(start coefficients, start merge) from ``params.start``: 'uniform', a stored run id, or a method name."""
    spectral = params.granularity == "spectral"
    key = params.start.strip()
    if start is not None or key in ("", "uniform"):
        return start, (coefs_to_merge(bench.adapters, start) if spectral and start is not None else None)
    if key.lower().replace("-", "_") in METHODS:
        if not spectral:
            raise MergecoreError(f"start {key!r} is a merge method; only spectral learning starts from a method's merge")
        return None, merge_adapters(bench.adapters, key.lower().replace("-", "_"))
    if store is None:
        raise MergecoreError(f"start {key!r}: not 'uniform' or a method, and no run store to find a run in")
    if spectral:
        return None, run_merge(store, key, bench.adapters)
    if "coefs" not in store.artifacts(key):
        raise MergecoreError(f"run {key} has no coefficients to start from; pick a learned run or 'uniform'")
    return store.get_tensors(key, "coefs")["coefs"], None


def record_baselines(bench: Workbench, store: RunStore) -> str:
    """Store pre-trained / experts / uniform as one 'baseline' run (Compare shows it)."""
    t0 = time.perf_counter()
    base = cached_baselines(bench, store)
    run_id = store.create("baselines", "baseline", bench_config(bench, BASELINES))
    store.finish(run_id, "done", {"baselines": base, "seconds": time.perf_counter() - t0})
    return run_id


def create_static_run(bench: Workbench, method: str, params, store: RunStore, weights: list[float] | None = None,
                      name: str | None = None) -> str:
    return store.create(name or method, "static", bench_config(bench, method, params, weights))


def run_static(bench: Workbench, method: str, params=None, store: RunStore | None = None, weights: list[float] | None = None,
               name: str | None = None, run_id: str | None = None,
               on_event: Callable[[str, int, dict], None] | None = None) -> tuple[str | None, dict]:
    """Apply a static merge method, evaluate it, and store it as a run (artifact 'merged').

    ``run_id``: a run already created with ``create_static_run`` (a worker's job: stage events go to it and a
    failure marks it failed); without one the run is created only once the merge has succeeded."""
    m = get_method(method)
    params = params or m.params_cls()
    if store:
        store.check_writable()

    def stage(key: str, text: str) -> None:
        if store and run_id:
            store.add_event(run_id, "stage", 0, {"stage": key, "text": text})
        if on_event:
            on_event("stage", 0, {"stage": key, "text": text})

    try:
        merge, result = _static_merge(bench, m, params, weights, store, stage)
        if store:
            run_id = run_id or create_static_run(bench, m.name, params, store, weights, name)
            store.put_tensors(run_id, "merged", merge_to_tensors(merge))
            store.finish(run_id, "done", result)
    except StoreError as exc:
        if not run_id:  # nothing was recorded: the error as it is
            raise
        raise store_stopped(store, run_id, exc, "before its merge was saved") from exc
    except Exception as exc:
        if store and run_id:
            store.finish(run_id, "failed", {}, str(exc) if isinstance(exc, MergecoreError) else f"{type(exc).__name__}: {exc}")
        raise
    return run_id, result


def _static_merge(bench: Workbench, m, params, weights, store: RunStore | None, stage) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    if m.needs_features:
        stage("features", "collecting the layer inputs the method needs")
    features = collect_features(bench) if m.needs_features else None
    stage("merging", f"merging with {m.name}")
    merge = merge_adapters(bench.adapters, m.name, params, weights=weights, features=features)
    stage("evaluating", "scoring the merge and the baselines on the evaluation split")
    scores = evaluate(bench, MergedSource(merge, bench.device))
    info = {k: v.info for k, v in merge.items() if v.info}
    result = {**summarize(bench, scores, store), "status": "done", "message": "", "seconds": time.perf_counter() - t0,
              "space": m.space, "dense": any(not v.is_factored for v in merge.values()),
              "info": {k: {kk: (vv if isinstance(vv, (int, float, str)) else str(vv)) for kk, vv in v.items()}
                       for k, v in info.items()}}
    return merge, result
