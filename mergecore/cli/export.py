"""CLI command 'export' (registered into mergecore.cli.main).

    python -m mergecore export --run ID_OR_RUN_FOLDER --out DIR [--rank r] [--full-weights]
                               [--head TASK] [--force] [--workspace W] [--adapters DIR ...]

``--run`` (here and in ``analyze``) takes a run id or a run folder; without --adapters/--demo the run's
own adapter folders are loaded, and without --task-files/--glue its own task source (``run_sources``).
"""

from __future__ import annotations

import json
from pathlib import Path

from mergecore.cli.main import EXTRA_COMMANDS, add_source_args, emit_json, open_bench, open_store
from mergecore.errors import MergecoreError


def run_config(ref: str, store) -> dict:
    """The config a run recorded (a run folder's run.json, or the store's record); {} when unreadable
    (``load_run`` then reports the corrupt folder)."""
    folder = Path(str(ref)).expanduser()
    if folder.is_dir():
        try:
            config = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("config", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return config if isinstance(config, dict) else {}
    if store is None:
        raise MergecoreError(f"{ref} is neither a run folder nor a run id with a workspace; pass --workspace")
    return store.get(str(ref)).config


def _gone(what: str, path, flag: str) -> MergecoreError:
    return MergecoreError(f"the run's {what} {path} no longer exists; pass {flag}")


def _task_file_paths(mapping: Path) -> list[Path]:
    """The data files a task mapping names (relative paths from the mapping's folder, else the current one)."""
    try:
        specs = json.loads(mapping.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # open_bench reports an unreadable mapping
    paths = []
    for s in specs if isinstance(specs, list) else []:
        for key in ("train", "eval"):
            value = s.get(key) if isinstance(s, dict) else None
            if isinstance(value, str) and value.strip():
                p = Path(value).expanduser()
                paths.append(p if p.is_absolute() or not (mapping.parent / p).exists() else mapping.parent / p)
    return paths


def run_sources(ref: str, store, args) -> dict:
    """Fill ``args`` with the run's own inputs where the user gave none: its adapter folders (--adapters)
    and its task source (--task-files / --glue with --glue-dir and sizes; demo tasks need nothing).
    A recorded source that no longer exists is one line naming it and the flag to pass. Returns the config."""
    config = run_config(ref, store)
    if not args.adapters and not args.demo:
        sources = [a.get("source") for a in config.get("adapters") or []]
        if sources:
            for s in sources:
                local = s and (Path(s).expanduser().is_absolute() or Path(s).expanduser().is_dir())
                if not s or (local and not Path(s).expanduser().is_dir()):
                    raise _gone("adapter folder", s, "--adapters DIR ... (the run's adapters, in order)")
            args.adapters = sources
    if args.glue is None and args.task_files is None:
        src = config.get("task_source") or {}
        if src.get("kind") == "files":
            mapping = Path(src.get("path") or "")
            if not mapping.is_file():
                raise _gone("task mapping", mapping, "--task-files JSON")
            for f in _task_file_paths(mapping):
                if not f.is_file():
                    raise _gone(f"task file (from {mapping})", f, "--task-files JSON with the new paths")
            args.task_files = mapping
        elif src.get("kind") == "glue":
            if src.get("dir") and not Path(src["dir"]).is_dir():
                raise _gone("GLUE folder", src["dir"], "--glue-dir DIR")
            args.glue, args.glue_dir = list(src.get("names") or []), src.get("dir") or src.get("source")
            args.calibration = src.get("calibration", args.calibration)
            args.eval_size = src.get("eval_size", args.eval_size)
    return config


class RunFolderStore:
    """The workspace store, also answering for the run of one run folder (read-only; that run's analyses
    are not cached, its id might name another run in the workspace)."""

    def __init__(self, folder: Path, store):
        from mergecore.runs.store import RunRecord

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
        from mergecore.export.adapter import _read_tensors

        return _read_tensors(self.folder / f"{name}.safetensors")

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

    def __getattr__(self, name):  # everything else: the workspace store
        return getattr(self.store, name)


def run_store(ref: str, store) -> tuple:
    """(store, run id) for ``--run``: a run folder (its run answered from the folder) or an id in ``store``
    (an unknown id is one line)."""
    folder = Path(str(ref)).expanduser()
    if folder.is_dir():
        wrapped = RunFolderStore(folder, store)
        return wrapped, wrapped.record.id
    return store, store.get(str(ref)).id


def export_mode(args) -> tuple[str, int]:
    if args.rank is not None and args.full_weights:
        raise MergecoreError("--rank (compressed adapter) and --full-weights exclude each other; pick one")
    if args.full_weights:
        return "full", 8
    return ("compressed", args.rank) if args.rank is not None else ("exact", 8)


def cmd_export(args) -> int:
    from mergecore.export.adapter import ExportParams, export_run, load_run

    mode, rank = export_mode(args)
    params = ExportParams(mode=mode, rank=rank, head=args.head or "", samples=args.samples,
                          overwrite=args.force).validate()
    store = open_store(args)
    run_sources(args.run, store, args)  # the run's adapters and tasks unless given
    bench = open_bench(args)
    run = load_run(args.run, store, bench.adapters)
    res = export_run(bench, run, args.out, params)
    ex = res.card["export"]
    ranks = sorted(set(ex["ranks"].values()))
    print(f"exported run {run.id} ({mode}, {ex['family']}" + (f", ranks {ranks}" if ranks else "")
          + (f", head {ex['head']}" if ex["head"] else "") + f") to {res.path}")
    if "energy" in ex:
        change = ex["probability_change"]
        print(f"retained energy {ex['energy']['overall']:.4f} overall (worst module {ex['energy']['min']:.4f})"
              + (f"; largest label-probability change on calibration inputs {change['max']:.4g}"
                 if change["max"] is not None else "")
              + (f" (generative tasks left out: {', '.join(change['left_out'])})" if change["left_out"] else ""))
    if args.json:
        emit_json({"path": str(res.path), "files": res.files, "export": ex})
    return 0


def register_export(sub) -> None:
    p = sub.add_parser("export", help="write a run as a PEFT LoRA adapter folder (or full weights) + merge card")
    add_source_args(p)
    p.add_argument("--run", required=True, help="run id in the workspace, or a run folder (run.json + tensors); "
                                                "its adapters and tasks are reused unless given")
    p.add_argument("--out", required=True, type=Path, help="target folder (must not exist unless --force)")
    p.add_argument("--rank", type=int, help="compress to this rank by truncated SVD (default: exact, rank = sum r_k)")
    p.add_argument("--full-weights", action="store_true", help="write the full merged model instead of an adapter")
    p.add_argument("--head", help="task whose head the adapter carries (default: the first task)")
    p.add_argument("--samples", type=int, default=128, help="calibration examples per task for the compressed report")
    p.add_argument("--force", action="store_true", help="replace an existing target folder")
    p.set_defaults(fn=cmd_export)


EXTRA_COMMANDS.append(register_export)
