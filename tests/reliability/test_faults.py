"""Faults: SIGKILL mid-run, concurrent runs on one registry, bounded memory of finished jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from test_learn import tiny_bench

from mergecore.learn.params import LearnParams
from mergecore.runs.jobs import MAX_FINISHED, JobRegistry
from mergecore.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import sys, torch
    sys.path[:0] = [{tests!r}]
    from transformers import AutoTokenizer, BertForSequenceClassification
    from mergecore.adapters import load_adapters
    from mergecore.forward.readers import ClassifierReader
    from mergecore.learn.params import LearnParams
    from mergecore.forward.model import MergeModel
    from mergecore.runs.runner import run_learning
    from mergecore.runs.store import RunStore
    from mergecore.data.tasks import Split, Task, TaskSet
    from mergecore.forward.workbench import Workbench
    from conftest import texts
    base, dirs, ws = {base!r}, {dirs!r}, {ws!r}
    ad = load_adapters(dirs)
    mm = MergeModel(BertForSequenceClassification.from_pretrained(base), ad)
    tasks = TaskSet(tuple(Task(n, tuple(f"l{{i}}" for i in range(c)), Split(tuple((t,) for t in texts(12, k))),
                               Split(tuple((t,) for t in texts(6, 9 + k)), tuple(i % c for i in range(6))))
                          for k, (n, c) in enumerate(zip(ad.names, mm.num_labels))))
    bench = Workbench(ad, tasks, mm, ClassifierReader(AutoTokenizer.from_pretrained(base)))
    run_learning(bench, LearnParams(steps=100000, batch_size=4, eval_every=0, objective="entropy"), RunStore(ws))
''')


def test_sigkill_mid_run_leaves_store_readable_and_run_interrupted(tiny_setup, tmp_path):
    base, dirs = tiny_setup
    ws = tmp_path / "ws"
    code = WORKER.format(tests=str(ROOT / "tests"), base=str(base), dirs=[str(d) for d in dirs], ws=str(ws))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if (ws / "runs.sqlite").exists():
                runs = RunStore(ws).list()
                if runs and len(RunStore(ws).events(runs[0].id)) >= 3:
                    break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = RunStore(ws)  # a restarted app opens the store
    (run,) = store.list()
    assert run.status == "interrupted"
    steps = [e["step"] for e in store.events(run.id, "step")]
    assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1))
    assert all("coefs" in e and "loss" in e for e in store.events(run.id, "step"))


def test_two_concurrent_runs_complete_without_mixing(tiny_setup, tmp_path):
    bench = tiny_bench(tiny_setup)
    reg = JobRegistry(RunStore(tmp_path))
    a = reg.start(bench, LearnParams(steps=6, batch_size=4, eval_every=0, objective="entropy", seed=1), name="a")
    b = reg.start(bench, LearnParams(steps=9, batch_size=4, eval_every=0, objective="js", seed=2), name="b")
    for job in (a, b):
        job.thread.join(300)
    assert a.status == b.status == "done"
    assert [s for k, s, _ in a.history if k == "step"] == list(range(1, 7))
    assert [s for k, s, _ in b.history if k == "step"] == list(range(1, 10))
    store = reg.store
    assert [e["step"] for e in store.events(a.run_id)] == list(range(1, 7))
    assert [e["step"] for e in store.events(b.run_id)] == list(range(1, 10))
    # each run's final coefficients equal the last event it emitted (nothing crossed over)
    for job in (a, b):
        last = torch.tensor(store.events(job.run_id, "step")[-1]["coefs"])
        assert torch.allclose(store.get_tensors(job.run_id, "coefs")["coefs"][:1], last[:1])


def test_finished_jobs_are_pruned_from_memory(tiny_setup, tmp_path):
    bench = tiny_bench(tiny_setup)
    reg = JobRegistry(RunStore(tmp_path))
    for i in range(MAX_FINISHED + 3):
        job = reg.start(bench, LearnParams(steps=1, batch_size=2, eval_every=0), name=f"r{i}")
        job.thread.join(120)
    reg.start(bench, LearnParams(steps=1, batch_size=2, eval_every=0)).thread.join(120)
    assert len(reg.jobs) <= MAX_FINISHED + 1
    assert len(reg.store.list()) == MAX_FINISHED + 4  # the store keeps every run
