"""Run folders: one run written to and read back from a plain folder (run.json, events.jsonl and one
safetensors file per artifact), so a run can travel without its workspace.

    write_run_folder(out, store, run_id)   written atomically (a ``.partial`` sibling renamed at the end);
                                           never over a user's folder, the workspace or the run's inputs
    open_run(ref, store)                   ``--run`` read once: a run id in the store or a run folder ->
                                           (the ``Store`` answering for it, its ``RunRecord``)
    load_run(ref, store, adapters)         the run and its merged update (``merged.run_merge``, for both)

What the run was made from is ``forward.spec.RunSpec.from_record(record.config)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load

from mergecore.adapters import AdapterSet
from mergecore.data.sources import mapping_files
from mergecore.errors import MergecoreError
from mergecore.files import atomic_folder
from mergecore.merged import Merge, coefs_to_merge, tensors_to_merge
from mergecore.numbers import dumps
from mergecore.runs.store import RunRecord, Store


def write_run_folder(out: Path, store: Store, run_id: str, force: bool = False, protect=()) -> None:
    """run.json (config + result), events.jsonl and coefs.safetensors, written atomically. An existing
    non-empty ``out`` is replaced only with ``force`` and only when mergecore wrote it (``files.check_target``);
    never the workspace nor the run's inputs (``run_inputs``), nor ``protect``."""
    rec = store.get(run_id)
    keep = [*protect, *run_inputs(getattr(store, "workspace", None), [a.get("source") for a in
                                  rec.config.get("adapters") or [] if isinstance(a, dict)], rec.config.get("task_source"))]
    with atomic_folder(Path(out), force, keep, what="run folder target") as tmp:
        (tmp / "run.json").write_text(dumps({"id": rec.id, "name": rec.name, "kind": rec.kind, "status": rec.status,
                                             "config": rec.config, "result": rec.result}, indent=2))
        with open(tmp / "events.jsonl", "w") as f:
            for e in store.events(run_id):
                f.write(dumps(e) + "\n")
        for artifact in store.artifacts(run_id):  # coefs, merged (static / spectral), spectral gains
            (tmp / f"{artifact}.safetensors").write_bytes(store.get_blob(run_id, artifact))


def run_inputs(workspace, adapter_sources, task_source: dict | None) -> list[tuple[str, Path]]:
    """What a written folder must never replace, as (label, path) pairs for ``files.check_target``: the
    workspace, the local adapter folders, a local GLUE folder, the task mapping and the data files it names
    (``task_source``: ``data.sources.record``'s form). Hub ids and unreadable mappings name nothing."""
    keep = [("the workspace", Path(workspace))] if workspace else []
    keep += [("the run's adapter folder", Path(str(s)).expanduser()) for s in adapter_sources or [] if is_local(s)]
    src = task_source if isinstance(task_source, dict) else {}
    if src.get("kind") == "glue" and src.get("dir"):
        keep.append(("the run's GLUE folder", Path(str(src["dir"]))))
    if src.get("kind") == "files" and src.get("path"):
        mapping = Path(str(src["path"])).expanduser()
        keep.append(("the run's task mapping", mapping))
        keep += [("the run's task file", p) for p in mapping_files(mapping)]
    return keep


def is_local(path) -> bool:
    """Whether ``path`` names something on this machine (not a hub id or a run id)."""
    try:
        return bool(path) and Path(str(path)).expanduser().exists()
    except (OSError, ValueError):  # a name with a NUL byte
        return False


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load(path.read_bytes())
    except Exception as exc:
        raise MergecoreError(f"{path} is corrupt or truncated ({type(exc).__name__}); write the run folder again") from None


class RunFolderStore:
    """The workspace store, also answering for the run of one run folder (read-only; that run's analyses
    are not cached, its id might name another run in the workspace)."""

    def __init__(self, folder: Path, store: Store | None):
        try:
            meta = json.loads((folder / "run.json").read_text(encoding="utf-8"))
            rid, config = str(meta["id"]), dict(meta["config"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MergecoreError(f"{folder / 'run.json'} is missing or corrupt ({type(exc).__name__}); "
                                 "write the run folder again with `learn --out` / `merge --out`") from None
        self.folder, self.store = folder, store
        self.record = RunRecord(rid, str(meta.get("name", rid)), str(meta.get("kind", "")),
                                str(meta.get("status", "done")), "", 0.0, 0.0, config, dict(meta.get("result") or {}))

    def _own(self, run_id) -> bool:
        return run_id == self.record.id

    def get(self, run_id: str):
        return self.record if self._own(run_id) else self.store.get(run_id)

    def list(self, kind: str | None = None) -> list:
        runs = [r for r in self.store.list(kind) if not self._own(r.id)]
        return runs + ([self.record] if kind is None or self.record.kind == kind else [])

    def artifacts(self, run_id: str) -> list[str]:
        if not self._own(run_id):
            return self.store.artifacts(run_id)
        return sorted(p.stem for p in self.folder.glob("*.safetensors"))

    def get_blob(self, run_id: str, name: str) -> bytes:
        if not self._own(run_id):
            return self.store.get_blob(run_id, name)
        path = self.folder / f"{name}.safetensors"
        if not path.is_file():
            raise MergecoreError(f"run folder {self.folder} has no {path.name}; write the run folder again")
        return path.read_bytes()

    def get_tensors(self, run_id: str, name: str):
        if not self._own(run_id):
            return self.store.get_tensors(run_id, name)
        return read_tensors(self.folder / f"{name}.safetensors")

    def events(self, run_id: str, kind: str | None = None) -> list[dict]:
        if not self._own(run_id):
            return self.store.events(run_id, kind)
        path = self.folder / "events.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.is_file() else []
        return [e for e in rows if kind is None or e.get("kind") == kind]

    def cache_get(self, key: str) -> bytes | None:
        return None if f":{self.record.id}:" in key else self.store.cache_get(key)

    def cache_put(self, key: str, data: bytes) -> None:
        if f":{self.record.id}:" not in key:
            self.store.cache_put(key, data)

    def events_since(self, run_id: str, after: int = -1) -> list:
        if self._own(run_id):
            return [(i, e.get("kind"), e.get("step"), {k: v for k, v in e.items() if k not in ("kind", "step")})
                    for i, e in enumerate(self.events(run_id)) if i > after]
        return self.store.events_since(run_id, after)

    @property
    def workspace(self) -> Path | None:
        return getattr(self.store, "workspace", None)


def open_run(ref: str | Path, store: Store | None) -> tuple[Store, RunRecord]:
    """``--run`` resolved once: a run folder (its run answered from the folder, every other from ``store``) or
    a run id in ``store`` (an unknown id is one line). Returns the store that answers for it and its record."""
    folder = Path(str(ref)).expanduser()
    if folder.is_dir():
        view = RunFolderStore(folder, store)
        return view, view.record
    if store is None:
        raise MergecoreError(f"{ref} is neither a run folder nor a run id with a workspace; pass --workspace")
    return store, store.get(str(ref))


@dataclass(frozen=True)
class RunSource:
    """A run to export: its record fields and its merged update."""

    id: str
    name: str
    kind: str
    config: dict
    result: dict
    merge: Merge


def load_run(ref: str | Path, store: Store | None, adapters: AdapterSet) -> RunSource:
    """A run by store id, or a run folder written by ``write_run_folder`` (run.json + tensors), with its merged
    update: the 'merged' artifact, or its coefficients folded into ``adapters`` (refused for other adapters)."""
    return run_source(*open_run(ref, store), adapters)


def run_source(store: Store, rec: RunRecord, adapters: AdapterSet) -> RunSource:
    """An opened run (``open_run``) and its merged update, through the one reader ``merged.run_merge``."""
    check_run_adapters(rec.config, adapters, rec.id)
    return RunSource(rec.id, rec.name, rec.kind, rec.config, rec.result, run_merge(store, rec.id, adapters))


def run_merge(store: Store, run_id: str, adapters: AdapterSet) -> Merge:
    """The merged update of a stored run: its 'merged' artifact, or its coefficients folded in."""
    names = store.artifacts(run_id)
    if "merged" in names:
        return tensors_to_merge(store.get_tensors(run_id, "merged"))
    if "coefs" in names:
        coefs = store.get_tensors(run_id, "coefs").get("coefs")
        if coefs is None or coefs.shape != (len(adapters.modules), len(adapters)):
            got = "no" if coefs is None else tuple(coefs.shape)
            raise MergecoreError(f"run {run_id} was learned on other adapters ({got} coefficients); load its adapters")
        return coefs_to_merge(adapters, coefs)
    raise MergecoreError(f"run {run_id} has no merged update (status {store.get(run_id).status}); pick a finished run")


def check_run_adapters(config: dict, adapters: AdapterSet, run_id: str) -> None:
    """Refuse a run learned on other adapters (names and content hashes from its config)."""
    want = [(a.get("name"), a.get("sha256")) for a in config.get("adapters") or []]
    have = [(a.name, a.sha256) for a in adapters.adapters]
    if want and want != have:
        raise MergecoreError(
            f"run {run_id} was made from adapters {[n for n, _ in want]} with other contents than the loaded "
            f"{[n for n, _ in have]}; load the run's adapters (same folders) before exporting"
        )
