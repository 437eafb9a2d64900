"""Jobs: each learning run and static merge a long-lived process (the app) starts runs in its own OS process.

The server creates the run in the store (so a page can follow it before the worker has imported torch),
writes a ``JobSpec`` next to the store and starts ``python -m mergecore.runs.worker SPEC`` in a new session:
a run goes on when its tab closes, when the server restarts, and a Ctrl-C of the server does not reach it.
The worker records its pid in the store and every event there; the server only starts, stops and reads.
Stop is SIGTERM to the recorded pid (the worker stops between steps and marks the run cancelled); a worker
that dies is marked interrupted by ``RunStore.mark_interrupted`` once its pid is gone.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mergecore.errors import MergecoreError
from mergecore.forward.spec import LEARNED, RunSpec
from mergecore.forward.workbench import Workbench
from mergecore.learn.params import LearnParams
from mergecore.merges import get_method
from mergecore.merges.base import check_weights
from mergecore.runs.runner import create_learning_run, create_static_run, resolve_start
from mergecore.runs.store import RunStore, StoreError


@dataclass(frozen=True)
class JobSpec:
    """One worker's job: the run's id and store, and the ``RunSpec`` it is made from (its method and params:
    ``LearnParams`` for ``kind`` learn, a static merge method's params for merge), on ``spec.device``."""

    run_id: str
    workspace: str
    kind: str  # learn | merge
    spec: RunSpec
    threads: int = 0  # torch threads in the worker; 0: torch's default

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.run_id}.json"
        path.write_text(json.dumps({"run_id": self.run_id, "workspace": self.workspace, "kind": self.kind,
                                    "threads": self.threads, "device": self.spec.device,
                                    "spec": self.spec.to_record()}, indent=1))
        return path

    @staticmethod
    def read(path: str | Path) -> "JobSpec":
        d = json.loads(Path(path).read_text())
        kind, method = d["kind"], d["spec"]["method"]
        cls = LearnParams if kind == "learn" else get_method(method).params_cls
        spec = RunSpec.from_record(d["spec"], cls, device=d["device"])
        return JobSpec(d["run_id"], d["workspace"], d["kind"], spec, d["threads"])


def thread_share(parallel: int) -> int:
    """Torch threads per worker when ``parallel`` runs share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(parallel, 1))


def devices_for(device: str, n: int) -> list[str]:
    """``n`` runs on ``device``; 'cuda' with several GPUs places them round-robin on cuda:0, cuda:1, ..."""
    if device == "cuda":
        count = torch.cuda.device_count()
        if count > 1:
            return [f"cuda:{i % count}" for i in range(n)]
    return [device] * n


def _env(threads: int = 0) -> dict:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding mergecore/, whatever the cwd
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
            **({"OMP_NUM_THREADS": str(threads)} if threads else {})}


class Workers:
    """Starts worker processes and reaps the ones this server started (a child that exits stays a zombie
    until waited for, and a zombie's pid still looks alive).

    ``spare=True`` (the app) keeps one worker started ahead (from ``ensure_spare``, when a page that starts runs
    opens while no run is going), its imports done (torch, transformers and peft take ~5 s on the 2-core CPU), waiting on its stdin for
    the next job's spec: a run's first chart comes that much sooner. The spare exits when its stdin closes
    (the server is gone)."""

    def __init__(self, store: RunStore, spare: bool = False):
        self.store = store
        self.procs: dict[str, subprocess.Popen] = {}
        self.keep_spare = spare
        self.spare: subprocess.Popen | None = None

    @property
    def folder(self) -> Path:
        return self.store.workspace / "jobs"

    def ensure_spare(self) -> None:
        """Start the spare now if there is none and no run of this server is going (its ~5 s of imports would
        take the cores from a running job); the pages that start runs call this when they open."""
        self.reap()
        if self.keep_spare and not self.procs and (self.spare is None or self.spare.poll() is not None) \
                and not self.store.readonly:  # a read-only store starts no run
            try:
                self._start_spare()
            except OSError:  # a full disk or a read-only workspace: runs start without a spare (and say why)
                self.spare = None

    def _start_spare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "spare.log", "ab") as log:
            self.spare = subprocess.Popen([sys.executable, "-m", "mergecore.runs.worker", "--wait"], stdin=subprocess.PIPE,
                                          stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)

    def _take_spare(self, path: Path) -> subprocess.Popen | None:
        proc, self.spare = self.spare, None
        if proc is None or proc.poll() is not None:
            return None
        try:
            proc.stdin.write(f"{path}\n".encode())
            proc.stdin.close()
        except OSError:  # it died meanwhile
            return None
        return proc

    def spawn(self, spec: JobSpec) -> None:
        try:
            path = spec.write(self.folder)
            proc = self._take_spare(path)
            if proc is None:
                with open(self.folder / f"{spec.run_id}.log", "ab") as log:
                    proc = subprocess.Popen([sys.executable, "-m", "mergecore.runs.worker", str(path)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=_env(spec.threads), start_new_session=True)
        except OSError as exc:  # a full disk, a read-only workspace: the run is not left 'running'
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            error = MergecoreError(f"cannot start the worker of run {spec.run_id} ({exc.strerror or exc}: {self.folder})"
                                   f"; {'free some space' if full else 'make the workspace writable'}, or point "
                                   "--workspace elsewhere")
            self.abandon([spec.run_id], str(error))
            raise error from exc
        self.store.set_pid(spec.run_id, proc.pid)
        self.procs[spec.run_id] = proc

    def abandon(self, run_ids: list[str], message: str) -> None:
        """Runs created but never started: 'failed' with ``message`` (if the store takes it)."""
        for run_id in run_ids:
            try:
                self.store.finish(run_id, "failed", {}, message)
            except StoreError:
                pass

    def reap(self) -> None:
        """Wait for finished children; runs whose worker died become 'interrupted'."""
        for run_id, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            if self.procs.pop(run_id, None) is None:  # another thread reaped it (the live view's route, a page)
                continue
            if proc.returncode == -signal.SIGTERM and self.store.get(run_id).status == "running":
                # stopped before the worker installed its handler (still importing): the user's stop, not a crash
                self.store.finish(run_id, "cancelled", {}, "stopped by the user before the worker started")
        self.store.mark_interrupted()

    def stop(self, run_id: str) -> bool:
        """Ask the run's worker to stop (SIGTERM); False when the run is not running."""
        self.reap()
        pid = self.store.pid(run_id)
        if self.store.get(run_id).status != "running" or not pid or pid == os.getpid():
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.reap()
            return False
        return True

    def start_learning(self, bench: Workbench, spec: RunSpec, runs: list[LearnParams],
                       names: list[str | None] | None = None) -> list[str]:
        """One worker per run, all at once (a race); bad input is refused before anything is written."""
        names = names or [None] * len(runs)
        for params in runs:
            resolve_start(bench, params.validate(), self.store, None)
        ids = [create_learning_run(bench, p, self.store, n) for p, n in zip(runs, names)]
        threads = thread_share(len(runs))
        for i, (run_id, params, device) in enumerate(zip(ids, runs, devices_for(spec.device, len(runs)))):
            try:
                self.spawn(JobSpec(run_id, str(self.store.workspace), "learn",
                                   replace(spec, device=device, method=LEARNED, params=params), threads))
            except MergecoreError as exc:
                self.abandon(ids[i + 1:], f"not started: {exc}")
                raise
        return ids

    def start_merge(self, bench: Workbench, spec: RunSpec, method: str, params=None,
                    weights: list[float] | None = None, name: str | None = None) -> str:
        m = get_method(method)
        params = params or m.params_cls()
        weights = None if weights is None else check_weights(weights, bench.num_tasks)
        run_id = create_static_run(bench, m.name, params, self.store, weights, name)
        spec = replace(spec, method=m.name, params=params, weights=None if weights is None else tuple(weights))
        self.spawn(JobSpec(run_id, str(self.store.workspace), "merge", spec, thread_share(1)))
        return run_id
