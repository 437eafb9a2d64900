"""Background learning jobs for long-lived processes (the app), without any UI dependency.

A ``JobRegistry`` lives once per server process. Each job is a daemon thread running
``run_learning``; it appends events to an append-only history under a lock (and to the run
store). Readers take ``snapshot()``s, so any number of pages or tabs can follow one job.
Cancel sets a ``threading.Event`` the learner checks between steps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from mergecore.learn.params import LearnParams
from mergecore.runs.runner import create_learning_run, resolve_start, run_learning
from mergecore.runs.store import RunStore

MAX_FINISHED = 20  # finished jobs kept in memory; older ones live only in the run store


@dataclass
class Job:
    run_id: str
    name: str
    params: LearnParams
    stop: threading.Event = field(default_factory=threading.Event)
    history: list = field(default_factory=list)  # append-only: (kind, step, payload)
    status: str = "running"
    message: str = ""
    result: dict | None = None
    started: float = field(default_factory=time.time)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> bool:
        return self.status not in ("running", "queued")

    def snapshot(self) -> dict:
        with self.lock:
            return {"run_id": self.run_id, "name": self.name, "status": self.status, "message": self.message,
                    "history": list(self.history), "result": self.result, "steps": self.params.steps}

    def cancel(self) -> None:
        self.stop.set()


class JobRegistry:
    def __init__(self, store: RunStore):
        self.store = store
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def start(self, bench, params: LearnParams, name: str | None = None, start_coefs=None) -> Job:
        return self.start_sequence(bench, [params], [name], start_coefs)[0]

    def start_sequence(self, bench, params_list: list[LearnParams], names: list[str | None],
                       start_coefs=None) -> list[Job]:
        """Runs one after the other in one thread (e.g. entropy then JS); all runs exist from the start."""
        for params in params_list:
            resolve_start(bench, params.validate(), self.store, start_coefs)  # refuse bad input before any write
        jobs = []
        for params, name in zip(params_list, names):
            run_id = create_learning_run(bench, params, self.store, name)
            jobs.append(Job(run_id, name or f"{params.objective}-{params.granularity}", params))
        for job in jobs[1:]:
            job.status = "queued"
        thread = threading.Thread(target=self._work_all, args=(jobs, bench, start_coefs), daemon=True,
                                  name=f"learn-{jobs[0].run_id}")
        with self.lock:
            for job in jobs:
                job.thread = thread
                self.jobs[job.run_id] = job
            self._prune()
        thread.start()
        return jobs

    def _work_all(self, jobs: list[Job], bench, start_coefs) -> None:
        for job in jobs:
            if job.stop.is_set():
                job.status, job.message = "cancelled", "cancelled before it started"
                self.store.finish(job.run_id, "cancelled", {}, job.message)
                continue
            job.status = "running"
            self._work(job, bench, start_coefs)

    def _work(self, job: Job, bench, start_coefs) -> None:
        def on_event(kind, step, payload):
            with job.lock:
                job.history.append((kind, step, payload))

        try:
            _, result = run_learning(bench, job.params, self.store, on_event=on_event, stop=job.stop,
                                     start=start_coefs, run_id=job.run_id)
            with job.lock:
                job.result, job.status, job.message = result, result["status"], result["message"]
        except Exception as exc:  # the run is marked failed in the store by run_learning
            with job.lock:
                job.status, job.message = "failed", f"{type(exc).__name__}: {exc}"

    def get(self, run_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(run_id)

    def running(self) -> list[Job]:
        with self.lock:
            return [j for j in self.jobs.values() if not j.done]

    def _prune(self) -> None:
        finished = [j for j in self.jobs.values() if j.done]
        for j in sorted(finished, key=lambda j: j.started)[:-MAX_FINISHED or None]:
            del self.jobs[j.run_id]
