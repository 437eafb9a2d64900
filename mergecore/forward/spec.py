"""RunSpec: what a run is made from, as one value the CLI, the app, the worker, the store and run folders share.

    spec = RunSpec(adapters=(AdapterRef("adapters/sst2"), ...), tasks=TaskSource("glue", glue_dir=DIR))
    bench = spec.open()                  # the workbench, its resolved spec (hashes, task names) in bench.spec
    rec = bench.spec.to_record()         # what a run's config holds of its inputs ...
    RunSpec.from_record(rec) == bench.spec   # ... and the spec back (`--run`, a worker's job, a run folder)

The CLI builds a spec from its flags, the app from its forms, a worker from its job file; ``to_record`` and
``from_record`` are the only way a run's inputs go into and come out of the store and a run folder (their
config format: adapters with content hashes, ``task_source`` as ``data.sources.record`` writes it, ``load``
when not the default). ``bench_config`` adds what the opened bench observed (task fingerprints, modules).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mergecore.adapters import AdapterSet, load_adapters
from mergecore.data.sources import TaskSource, from_record, load_tasks, record
from mergecore.data.tasks import TaskSet
from mergecore.errors import MergecoreError
from mergecore.forward.workbench import Workbench, open_workbench
from mergecore.placement import LoadParams

LEARNED, BASELINES = "learned", "baselines"  # the run methods that are not a static merge method


@dataclass(frozen=True)
class AdapterRef:
    """One adapter of a run: a local folder (absolute once opened) or a hub id; its name and sha256 once loaded."""

    source: str
    name: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class RunSpec:
    adapters: tuple[AdapterRef, ...] = ()
    tasks: TaskSource | None = field(default_factory=TaskSource)  # None: not known (a bench opened directly)
    base_model: str = ""  # overrides the adapters' base (recorded: the base the run used)
    base_path: str = ""  # a local folder of the base when the adapters name a hub id
    family: str = ""  # classifier | seq2seq | causal; "": detected
    load: LoadParams = field(default_factory=LoadParams)
    device: str = "auto"  # where this process computes: not recorded
    allow_bin: bool = False  # the opt-ins are the user's, for this process: not recorded
    trust_remote_code: bool = False
    method: str = ""  # 'learned', 'baselines' or a static merge method; "": inputs only
    params: Any = None  # the method's frozen params dataclass (LearnParams, a merge method's params)
    weights: tuple[float, ...] | None = None  # a static merge's per-task weights

    @staticmethod
    def of(sources, **kw) -> "RunSpec":
        """A spec from adapter folders / hub ids as given (strings or paths)."""
        return RunSpec(adapters=tuple(AdapterRef(str(s)) for s in sources), **kw)

    def load_inputs(self) -> tuple[AdapterSet, TaskSet]:
        """The adapters (the base override applied) and one task per adapter, without the base model."""
        if not self.adapters:
            raise MergecoreError("a run needs adapters; pass --adapters DIR ... (or --demo for the demo kit)")
        adapters = load_adapters([a.source for a in self.adapters], allow_bin=self.allow_bin,
                                 base_model=self.base_model or None)
        return adapters, load_tasks(adapters.names, self.tasks or TaskSource())

    def open(self) -> Workbench:
        """Adapters, tasks and base loaded; the workbench carries the resolved spec (absolute folders, content
        hashes, task names, the base used) as ``bench.spec``."""
        adapters, tasks = self.load_inputs()
        for want, got in zip(self.adapters, adapters.adapters):  # a recorded run's adapters must be what it used
            if want.sha256 and want.sha256 != got.sha256:
                raise MergecoreError(f"adapter {got.name!r} in {want.source} changed since the run was made (sha256 "
                                     f"{want.sha256[:12]}..., now {got.sha256[:12]}...); restore it, or pass "
                                     "--adapters DIR ... to use other adapters")
        resolved = replace(self, adapters=tuple(AdapterRef(_absolute(a.source), a.name, a.sha256)
                                                for a in adapters.adapters),
                           tasks=_named(self.tasks or TaskSource(), tasks.names),
                           base_model=self.base_model or adapters.base_model or "")
        return open_workbench(adapters, tasks, device=self.device, trust_remote_code=self.trust_remote_code,
                              family=self.family or None, base_path=self.base_path or None, load=self.load,
                              spec=resolved)

    def to_record(self) -> dict:
        """The run config's inputs (and method, params, weights when set): plain JSON data."""
        rec: dict = {"base_model": self.base_model,
                     "adapters": [{"name": a.name, "source": a.source, "sha256": a.sha256} for a in self.adapters]}
        if self.tasks is not None:
            rec["task_source"] = record(self.tasks, list(self.tasks.names))
        if self.load != LoadParams():  # only when not the default, so default runs keep their cache keys
            rec["load"] = asdict(self.load)
        rec.update({k: v for k, v in (("base_path", self.base_path), ("family", self.family)) if v})
        if self.method:
            rec["method"] = self.method
            if self.params is not None:
                rec["params"] = asdict(self.params)
            if self.method not in (LEARNED, BASELINES):
                rec["weights"] = None if self.weights is None else list(self.weights)
        return rec

    @staticmethod
    def from_record(rec: dict, params_cls=None, **kw) -> "RunSpec":
        """The spec a run config (``to_record``'s form) records. Its params are rebuilt only with ``params_cls``
        (a worker running the job: ``LearnParams``, a merge method's ``params_cls``); reopening a run's inputs
        (``--run``) never needs them, so an older run's params never stop that. ``kw``: this process's device and
        opt-ins."""
        rec = rec if isinstance(rec, dict) else {}
        params, weights = rec.get("params") if params_cls else None, rec.get("weights")
        load = rec.get("load") if isinstance(rec.get("load"), dict) else {}
        return RunSpec(adapters=tuple(AdapterRef(str(a.get("source") or ""), str(a.get("name") or ""),
                                                 str(a.get("sha256") or ""))
                                      for a in rec.get("adapters") or [] if isinstance(a, dict)),
                       tasks=from_record(rec["task_source"]) if "task_source" in rec else None,
                       base_model=str(rec.get("base_model") or ""), base_path=str(rec.get("base_path") or ""),
                       family=str(rec.get("family") or ""),
                       load=LoadParams(**{f.name: load[f.name] for f in fields(LoadParams) if f.name in load}),
                       method=str(rec.get("method") or ""), params=None if params is None else params_cls(**params),
                       weights=tuple(weights) if isinstance(weights, list) else None, **kw)


def _absolute(source: str) -> str:
    p = Path(source).expanduser()
    return str(p.resolve()) if p.is_dir() else source  # a hub id stays as given


def _named(source: TaskSource, names: list[str]) -> TaskSource:
    """The source as its record reads back (``data.sources.record``: paths absolute and resolved, GLUE tasks matched
    from adapter names named), so a resolved spec round-trips through the store."""
    return from_record(record(source, names))


def spec_of(bench: Workbench) -> RunSpec:
    """The spec a bench was opened from; for a bench opened directly (``open_workbench``), what it shows of its
    inputs (the task source is then unknown and not recorded)."""
    if bench.spec is not None:
        return bench.spec
    return RunSpec(adapters=tuple(AdapterRef(_absolute(a.source), a.name, a.sha256) for a in bench.adapters.adapters),
                   tasks=None, base_model=bench.base_name, load=bench.load)


def bench_config(bench: Workbench, method: str = "", params=None, weights=None) -> dict:
    """A run's config: its spec's record (with ``method``, ``params``, ``weights``) plus what identifies the opened
    inputs: the tasks (names, data fingerprints, metrics) and the LoRA modules."""
    spec = replace(spec_of(bench), method=method, params=params,
                   weights=None if weights is None else tuple(weights))
    return {**spec.to_record(),
            "tasks": [{"name": t.name, "fingerprint": t.fingerprint(), "metric": t.metric} for t in bench.tasks],
            "modules": bench.adapters.modules}


def bench_key(bench: Workbench) -> str:
    """The cache key of a bench's baselines: its inputs, without any method."""
    return "baselines:" + hashlib.sha256(json.dumps(bench_config(bench), sort_keys=True).encode()).hexdigest()[:24]
