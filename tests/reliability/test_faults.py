"""Faults: SIGKILL mid-run leaves the store readable and the run interrupted (worker processes, races and
stop: tests/test_jobs.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
                if runs and len(RunStore(ws).events(runs[0].id, "step")) >= 3:
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
