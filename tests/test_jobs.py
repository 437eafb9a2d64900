"""Jobs in worker processes (mergecore/runs/jobs.py, worker.py): a run is its own OS process writing to the
store; stop, a dead worker, a server that goes away, races and static merges, on tiny BERT adapters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import label_task_files, make_adapter, tiny_bert_base

from mergecore.data.sources import TaskSource
from mergecore.errors import MergecoreError
from mergecore.forward.spec import AdapterRef, RunSpec
from mergecore.learn.params import LearnParams
from mergecore.runs.jobs import JobSpec, Workers, devices_for, thread_share
from mergecore.runs.store import FINAL, RunStore

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(batch_size=2, samples=6, eval_every=0, eval_limit=6)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Two tiny BERT adapters, their task files, the bench and the RunSpec it carries (what a page hands a worker)."""
    root = tmp_path_factory.mktemp("jobs")
    base = tiny_bert_base(root / "base")
    dirs = [make_adapter(base, root / "a0", 2, 2, ["query", "value"], seed=1),
            make_adapter(base, root / "a1", 3, 2, ["query", "value"], seed=2)]
    mapping = label_task_files(root, rows=8)
    bench = RunSpec.of(dirs, tasks=TaskSource("files", mapping=str(mapping)), device="cpu").open()
    return bench, bench.spec


def wait(store: RunStore, workers: Workers | None, run_id: str, until, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if workers:
            workers.reap()
        if until(store.get(run_id), store.events(run_id)):
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id}: {store.get(run_id).status} after {timeout} s; log: "
                         + (store.workspace / "jobs" / f"{run_id}.log").read_text()[-2000:])


def finished(rec, events) -> bool:
    return rec.status in FINAL


def test_race_runs_in_two_worker_processes_without_mixing(kit, tmp_path):
    bench, spec = kit
    workers = Workers(RunStore(tmp_path))
    runs = [LearnParams(steps=4, objective="entropy", granularity="task", seed=1, **QUICK),
            LearnParams(steps=6, objective="js", granularity="layer", seed=2, **QUICK)]
    ids = workers.start_learning(bench, spec, runs, ["a", "b"])
    pids = {workers.procs[i].pid for i in ids}
    assert len(pids) == 2 and os.getpid() not in pids  # one process per run, not the caller
    store = workers.store
    for run_id, params in zip(ids, runs):
        wait(store, workers, run_id, finished)
        rec = store.get(run_id)
        assert rec.status == "done", rec.message
        assert store.pid(run_id) in pids  # the worker claimed its run
        events = store.events(run_id, "stage")
        stages = [e["stage"] for k, e in enumerate(events) if k == 0 or e["stage"] != events[k - 1]["stage"]]
        assert stages == ["loading", "learning", "evaluating"]  # no Stage 1 to wait for: it runs batch by batch
        assert ("Stage 1" in events[1]["text"]) == (params.objective == "js")  # said so where there is one
        steps = store.events(run_id, "step")
        assert [e["step"] for e in steps] == list(range(1, params.steps + 1))
        final = store.get_tensors(run_id, "coefs")["coefs"]  # (L, K): the last step's coefficients, nothing crossed
        assert torch.allclose(final, torch.tensor(steps[-1]["coefs"]).expand_as(final), atol=1e-6)
        assert rec.result["scores"].keys() == set(bench.tasks.names)
    for proc in list(workers.procs.values()):
        proc.wait(60)  # the workers exit once their runs are stored
    workers.reap()
    assert not workers.procs  # reaped: no zombie left behind
    # the same run in this process gives the same first-step loss (the worker reopened the same inputs)
    from mergecore.runs.runner import run_learning

    _, _ = run_learning(bench, runs[1], store, name="here")
    here = next(r for r in store.list() if r.name == "here")
    assert store.events(here.id, "step")[0]["loss"] == pytest.approx(store.events(ids[1], "step")[0]["loss"], rel=1e-5)


def test_stop_ends_a_run_between_steps_keeping_its_coefficients(kit, tmp_path):
    bench, spec = kit
    workers = Workers(RunStore(tmp_path))
    (run_id,) = workers.start_learning(bench, spec, [LearnParams(steps=100000, **QUICK)])
    wait(workers.store, workers, run_id, lambda rec, ev: sum(e["kind"] == "step" for e in ev) >= 2)
    assert workers.stop(run_id)
    wait(workers.store, workers, run_id, finished)
    rec = workers.store.get(run_id)
    n = len(workers.store.events(run_id, "step"))
    assert rec.status == "cancelled" and rec.message == f"stopped by the user after {n} steps"
    assert "coefs" in workers.store.artifacts(run_id)
    assert not workers.stop(run_id)  # a finished run has nothing to stop


def test_stop_before_the_first_step_and_a_killed_worker(kit, tmp_path):
    bench, spec = kit
    workers = Workers(RunStore(tmp_path))
    early, killed = workers.start_learning(bench, spec, [LearnParams(steps=100000, **QUICK)] * 2, ["early", "killed"])
    assert workers.stop(early)  # at once: the worker is still importing or loading
    wait(workers.store, workers, early, finished)
    assert workers.store.get(early).status == "cancelled"
    assert "stopped by the user before" in workers.store.get(early).message
    wait(workers.store, workers, killed, lambda rec, ev: any(e["kind"] == "step" for e in ev))
    os.kill(workers.store.pid(killed), signal.SIGKILL)
    wait(workers.store, workers, killed, finished, timeout=30)
    assert workers.store.get(killed).status == "interrupted"


SERVER = textwrap.dedent('''
    import sys
    sys.path[:0] = [{tests!r}, {root!r}]
    from test_jobs import kit_from
    from mergecore.learn.params import LearnParams
    from mergecore.runs.jobs import Workers
    from mergecore.runs.store import RunStore
    bench, spec = kit_from({dirs!r}, {mapping!r})
    ids = Workers(RunStore({ws!r})).start_learning(bench, spec, [LearnParams(steps=5, batch_size=2, samples=6,
                                                                            eval_every=0)])
    print(ids[0])
''')


def kit_from(dirs: list[str], mapping: str):
    bench = RunSpec.of(dirs, tasks=TaskSource("files", mapping=mapping), device="cpu").open()
    return bench, bench.spec


def test_a_run_outlives_the_server_that_started_it(kit, tmp_path):
    _, spec = kit
    code = SERVER.format(tests=str(ROOT / "tests"), root=str(ROOT), dirs=[a.source for a in spec.adapters],
                         mapping=spec.tasks.mapping, ws=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = out.stdout.split()[-1]
    store = RunStore(tmp_path)  # a new server opens the store: the run is still running, in its own process
    wait(store, None, run_id, finished)
    assert store.get(run_id).status == "done", store.get(run_id).message
    assert [e["step"] for e in store.events(run_id, "step")] == [1, 2, 3, 4, 5]


def test_static_merge_job_and_refusals_before_any_write(kit, tmp_path):
    from mergecore.merges import parse_params

    bench, spec = kit
    workers = Workers(RunStore(tmp_path))
    run_id = workers.start_merge(bench, spec, "ties", parse_params("ties", ["density=0.5"]), weights=[0.7, 0.4])
    wait(workers.store, workers, run_id, finished)
    rec = workers.store.get(run_id)
    assert rec.status == "done", rec.message
    assert rec.config["params"]["density"] == 0.5 and rec.config["weights"] == [0.7, 0.4]
    assert [e["stage"] for e in workers.store.events(run_id, "stage")] == ["loading", "merging", "evaluating"]
    assert "merged" in workers.store.artifacts(run_id) and rec.result["scores"].keys() == set(bench.tasks.names)
    before = len(workers.store.list())
    with pytest.raises(MergecoreError, match="got 3 weights for 2 adapters"):
        workers.start_merge(bench, spec, "ties", weights=[1, 1, 1])
    with pytest.raises(MergecoreError, match="unknown merge method 'nope'"):
        workers.start_merge(bench, spec, "nope")
    with pytest.raises(MergecoreError, match="steps must be at least 1"):
        workers.start_learning(bench, spec, [LearnParams(steps=0)])
    assert len(workers.store.list()) == before and set(workers.procs) <= {run_id}  # no new run, no new process


def test_job_spec_round_trip_and_placement(tmp_path):
    from mergecore.merges import parse_params
    from mergecore.placement import LoadParams

    refs = (AdapterRef("a", "a", "0" * 64), AdapterRef("b", "b", "1" * 64))
    spec = JobSpec("r1", str(tmp_path), "merge", RunSpec(refs, base_model="base", device="cpu", method="ties",
                                                         params=parse_params("ties", ["density=0.2"]),
                                                         weights=(0.5, 0.5)), threads=1)
    assert JobSpec.read(spec.write(tmp_path)) == spec
    placed = JobSpec("r2", str(tmp_path), "learn", RunSpec.of(["a"], load=LoadParams("bfloat16", "nf4"),
                                                              method="learned", params=LearnParams(steps=7)))
    assert JobSpec.read(placed.write(tmp_path)) == placed  # the worker loads the base as the page did
    assert thread_share(1) == (os.cpu_count() or 1) and thread_share(10 ** 6) == 1
    assert devices_for("cpu", 3) == ["cpu"] * 3


def test_a_spare_worker_takes_the_next_job_and_exits_with_its_server(kit, tmp_path):
    bench, spec = kit
    workers = Workers(RunStore(tmp_path), spare=True)
    assert workers.spare is None  # started by the pages that start runs, not by every page
    workers.ensure_spare()
    spare = workers.spare
    (run_id,) = workers.start_learning(bench, spec, [LearnParams(steps=2, **QUICK)])
    assert workers.store.pid(run_id) == spare.pid  # the job went to the process started ahead
    wait(workers.store, workers, run_id, finished)
    assert workers.store.get(run_id).status == "done", workers.store.get(run_id).message
    assert "Traceback" not in (tmp_path / "jobs" / f"{run_id}.log").read_text()
    assert workers.spare is None  # no new spare while a run goes: its imports would slow the run
    workers.procs[run_id].wait(60)
    workers.ensure_spare()
    following = workers.spare
    assert following is not None and following.pid != spare.pid and following.poll() is None
    following.stdin.close()  # what the server's exit does to the pipe
    assert following.wait(60) == 0
