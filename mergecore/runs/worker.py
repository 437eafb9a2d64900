"""One job in its own process: ``python -m mergecore.runs.worker SPEC.json`` (started by ``runs.jobs.Workers``),
or ``--wait``: a spare that has done its imports and reads the spec path from stdin.

The run already exists in the store; the worker claims it (its pid), reopens the workbench from the spec,
runs the learner or the static merge, and writes every event and the result to the store. SIGTERM asks it to
stop: between steps once learning has started (the run ends 'cancelled' with the coefficients of the last
step, as a stop from the CLI would), at once before that (loading, Stage 1, a static merge).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import torch

from mergecore.errors import MergecoreError
from mergecore.runs.jobs import JobSpec
from mergecore.runs.runner import run_learning, run_static
from mergecore.runs.store import RunStore, StoreError


class Cancelled(BaseException):
    """Raised by the SIGTERM handler outside the step loop (a BaseException: run code's `except Exception`
    blocks do not turn it into a failure)."""


def _stop_handler(stop: threading.Event, in_steps: dict):
    def handler(signum, frame):
        stop.set()
        if not in_steps["yes"]:
            raise Cancelled()
    return handler


def run_job(spec: JobSpec, store: RunStore) -> None:
    stop, in_steps = threading.Event(), {"yes": False}
    signal.signal(signal.SIGTERM, _stop_handler(stop, in_steps))
    store.add_event(spec.run_id, "stage", 0, {"stage": "loading", "text": "loading the base model and the adapters"})
    bench = spec.spec.open()
    if spec.kind == "learn":
        def on_event(kind: str, step: int, payload: dict) -> None:
            if kind == "stage" and payload.get("stage") == "learning":
                in_steps["yes"] = True  # from here a stop ends the run between steps, keeping its coefficients

        run_learning(bench, spec.spec.params, store, on_event=on_event, stop=stop, run_id=spec.run_id)
    else:
        weights = None if spec.spec.weights is None else list(spec.spec.weights)
        run_static(bench, spec.spec.method, spec.spec.params, store, weights, run_id=spec.run_id)


def wait_for_spec() -> str | None:
    """A spare worker (``--wait``): imports done, it blocks until the server writes a spec path on stdin, then
    logs to that run's log file; None when stdin closes first (the server is gone)."""
    line = sys.stdin.readline().strip()
    if not line:
        return None
    log = os.open(os.path.splitext(line)[0] + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    return line


def _finish(store: RunStore, run_id: str, status: str, message: str, if_running: bool = False) -> None:
    """Record how the job ended if the store takes it (a store that fails says so in the log; the run is
    then marked interrupted when the server reaps this process)."""
    try:
        if not if_running or store.get(run_id).status == "running":
            store.finish(run_id, status, {}, message)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = wait_for_spec() if argv[:1] == ["--wait"] else argv[0]
    if path is None:
        return 0
    spec = JobSpec.read(path)
    try:
        store = RunStore(spec.workspace)
        store.set_pid(spec.run_id, os.getpid())
    except StoreError as exc:  # the run stays 'running' until the server reaps this process: 'interrupted'
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        run_job(spec, store)
    except Cancelled:
        _finish(store, spec.run_id, "cancelled", "stopped by the user before the first step")
    except StoreError as exc:  # the runner marked the run interrupted if the store let it
        print(f"error: {exc}", file=sys.stderr)
        _finish(store, spec.run_id, "interrupted", str(exc), if_running=True)
        return 2
    except MergecoreError as exc:
        _finish(store, spec.run_id, "failed", str(exc))
        return 2
    except Exception as exc:  # the traceback goes to the job's log next to the spec
        traceback.print_exc()
        _finish(store, spec.run_id, "failed", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
