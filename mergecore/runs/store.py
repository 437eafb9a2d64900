"""RunStore: runs, their configs, events and artifacts in SQLite (stdlib, WAL) in a workspace.

Every write is its own short transaction, so a crash loses nothing already written. A run still marked ``running``
whose process is gone is reported as ``interrupted`` on the next open. Tensors are stored as safetensors bytes,
everything else as JSON. A file that cannot be used (corrupt, a folder, read-only, locked, a full disk) raises
``StoreError``, one line naming the file and what to do; a read-only store opens for reading (``readonly``).
``Store`` is what reading runs needs (typed parameters take it); a run folder answers it too.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load, save

from mergecore.errors import MergecoreError
from mergecore.numbers import dumps

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, kind TEXT, status TEXT, message TEXT,
    created REAL, updated REAL, pid INTEGER, config TEXT, result TEXT);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT, seq INTEGER, step INTEGER, kind TEXT, payload TEXT, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT, name TEXT, data BLOB, PRIMARY KEY (run_id, name));
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, data BLOB, created REAL);
"""

FINAL = ("done", "failed", "cancelled", "interrupted")
BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's transaction before "locked"
ELSEWHERE = "or point --workspace elsewhere"


class StoreError(MergecoreError):
    """The run store's file cannot be used. ``kind``: corrupt | folder | readonly | locked | full | io | failed."""

    def __init__(self, kind: str, path: Path, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.kind, self.path, self.problem, self.fix = kind, path, problem, fix


@dataclass(frozen=True)
class RunRecord:
    id: str
    name: str
    kind: str  # learned | static | baseline
    status: str  # running | done | failed | cancelled | interrupted
    message: str
    created: float
    updated: float
    config: dict
    result: dict

    @property
    def label(self) -> str:
        """A short unique label: name plus the last 6 characters of the id."""
        return f"{self.name}:{self.id[-6:]}"


class Store(Protocol):  # what reading runs needs: ``RunStore``, and a run folder (``runs.folder.RunFolderStore``)
    def get(self, run_id: str) -> RunRecord: ...
    def list(self, kind: str | None = None) -> list[RunRecord]: ...
    def artifacts(self, run_id: str) -> list[str]: ...
    def get_blob(self, run_id: str, name: str) -> bytes: ...
    def get_tensors(self, run_id: str, name: str) -> dict[str, torch.Tensor]: ...
    def events(self, run_id: str, kind: str | None = None) -> list[dict]: ...
    def cache_get(self, key: str) -> bytes | None: ...
    def cache_put(self, key: str, data: bytes) -> None: ...


def merge_runs(store: Store) -> list[RunRecord]:
    """The runs that carry a merged update (learned coefficients or a static merge, stored as an artifact), finished
    or stopped by the user (after its first step): what the analysis and export views offer."""
    return [r for r in store.list() if r.kind in ("learned", "static") and r.status in ("done", "cancelled")
            and store.artifacts(r.id)]


def default_workspace() -> Path:
    """$MERGECORE_WORKSPACE, or ./workspace when it is unset or empty."""
    return Path(os.environ.get("MERGECORE_WORKSPACE", "").strip() or Path.cwd() / "workspace")


def _pid_alive(pid: int | None) -> bool:
    try:
        return bool(pid) and os.kill(pid, 0) is None
    except OSError as exc:  # no such process, or one of another user's
        return isinstance(exc, PermissionError)


class RunStore:
    """A SQLite file ``runs.sqlite`` in ``workspace``; safe to share between threads and processes.
    ``busy_timeout``: seconds a statement waits for another process's lock (default ``BUSY_TIMEOUT_S``)."""

    def __init__(self, workspace: str | Path | None = None, busy_timeout: float | None = None):
        self.workspace = Path(workspace) if workspace else default_workspace()
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MergecoreError(f"cannot create workspace {self.workspace} ({exc.strerror}); choose a writable folder") from None
        self.path = self.workspace / "runs.sqlite"
        self.busy_timeout = BUSY_TIMEOUT_S if busy_timeout is None else float(busy_timeout)
        self._ro_uri, self.readonly = None, self._readonly_reason() is not None
        try:
            with self._conn() as c:
                c.execute("PRAGMA journal_mode=WAL")
                c.executescript(SCHEMA)
            self.mark_interrupted()
        except StoreError as exc:
            if exc.kind != "readonly":
                raise
            self.readonly = True
        if self.readonly:
            self._open_readonly()

    def _readonly_reason(self) -> str | None:
        """Why this process cannot write the store (permissions or a read-only file system), None if it can."""
        for target, what in ((self.path, "the file"), (self.workspace, "its folder")):
            if target.exists() and not os.access(target, os.W_OK):
                return "the file system is read-only" if os.statvfs(target).f_flag & os.ST_RDONLY else f"{what} is not writable"
        return None

    def _open_readonly(self) -> None:
        """Reads without writing: ``mode=ro``, or ``immutable`` where sqlite cannot create its WAL index (a
        read-only folder); the schema is not created and runs left running are not marked."""
        for query in ("mode=ro", "immutable=1"):
            self._ro_uri = f"{self.path.resolve().as_uri()}?{query}"
            try:
                with self._conn() as c:
                    c.execute("SELECT COUNT(*) FROM runs").fetchone()
                return
            except StoreError as exc:
                if exc.kind != "readonly" or query == "immutable=1":
                    raise

    def check_writable(self) -> None:  # refuse a run before any work when the store cannot record it
        if self.readonly:
            raise self._error(sqlite3.OperationalError("attempt to write a readonly database"))

    def _connect(self) -> sqlite3.Connection:
        target, uri = (self._ro_uri, True) if self._ro_uri else (self.path, False)
        conn = sqlite3.connect(target, timeout=self.busy_timeout, uri=uri)
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    @contextmanager
    def _conn(self):
        conn = None
        try:
            conn = self._connect()
            with conn:
                yield conn
        except (sqlite3.DatabaseError, OSError) as exc:
            if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
                raise  # a bug in the statement, not the file
            raise self._error(exc) from exc
        finally:
            conn and conn.close()

    def _error(self, exc: Exception) -> StoreError:
        """One line for a failed sqlite call or file operation: what is wrong with the file and what to do."""
        p, name, code = self.path, getattr(exc, "sqlite_errorname", "") or "", getattr(exc, "errno", None)
        text = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        low = text.lower()
        kind = next((k for k, hit in (
            ("full", name == "SQLITE_FULL" or "disk is full" in low or code in (errno.ENOSPC, errno.EDQUOT)),
            ("readonly", name.startswith("SQLITE_READONLY") or "readonly" in low or code in (errno.EROFS, errno.EACCES)
             or (name == "SQLITE_CANTOPEN" and not p.exists() and self.readonly)),
            ("locked", name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in low),
            ("corrupt", name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in low or "malformed" in low),
            ("folder", p.is_dir()), ("io", name.startswith("SQLITE_IOERR") or "i/o error" in low)) if hit), "failed")
        problem, fix = {
            "full": (f"the disk holding the run store {p} is full", "free some space"),
            "readonly": (f"the run store {p} is read-only ({self._readonly_reason() or text})", "make it and its folder writable"),
            "locked": (f"the run store {p} is locked by another process (still busy after {self.busy_timeout:g} s)",
                       "wait for that process to finish or stop it"),
            "corrupt": (f"the run store {p} is corrupt or not a SQLite file ({text})",
                        f"move it aside (e.g. rename it to {p.name}.bad) to start an empty store"),
            "folder": (f"the run store {p} is a folder, not a file", "move it aside"),
            "io": (f"the run store {p} could not be read or written ({text})", "check the disk, move the file aside"),
            "failed": (f"the run store {p} cannot be used ({text})", "move it aside")}[kind]
        return StoreError(kind, p, problem, f"{fix}, {ELSEWHERE}")

    # ------------------------------------------------------------------ runs
    def create(self, name: str, kind: str, config: dict) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        now = time.time()
        with self._conn() as c:
            c.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (run_id, name, kind, "running", "", now, now, os.getpid(), dumps(config), "{}"))
        return run_id

    def finish(self, run_id: str, status: str, result: dict | None = None, message: str = "") -> None:
        with self._conn() as c:
            c.execute("UPDATE runs SET status=?, message=?, result=?, updated=? WHERE id=?",
                      (status, message, dumps(result or {}), time.time(), run_id))

    def set_pid(self, run_id: str, pid: int) -> None:  # a worker claims the run it was started for
        with self._conn() as c:
            c.execute("UPDATE runs SET pid=? WHERE id=?", (pid, run_id))

    def pid(self, run_id: str) -> int | None:
        with self._conn() as c:
            return next(iter(c.execute("SELECT pid FROM runs WHERE id=?", (run_id,)).fetchone() or [None]))

    def mark_interrupted(self) -> int:
        """Runs left 'running' by a dead process become 'interrupted'; how many (a read-only store: none, ``get``)."""
        if self.readonly:
            return 0
        with self._conn() as c:
            rows = c.execute("SELECT id, pid FROM runs WHERE status='running'").fetchall()
            dead = [r[0] for r in rows if not _pid_alive(r[1])]
            for run_id in dead:
                c.execute("UPDATE runs SET status='interrupted', message=? WHERE id=?",
                          ("the process running it stopped; events up to the last completed step are kept", run_id))
        return len(dead)

    def get(self, run_id: str) -> RunRecord:
        with self._conn() as c:
            row = c.execute("SELECT id,name,kind,status,message,created,updated,config,result,pid FROM runs WHERE id=?",
                            (run_id,)).fetchone()
        if row is None:
            raise MergecoreError(f"no run {run_id!r} in {self.path}; list runs with `python -m mergecore runs`")
        if self.readonly and row[3] == "running" and not _pid_alive(row[9]):  # what mark_interrupted would write
            row = (*row[:3], "interrupted", "the process running it stopped", *row[5:])
        return RunRecord(*row[:7], json.loads(row[7]), json.loads(row[8] or "{}"))

    def list(self, kind: str | None = None) -> list[RunRecord]:
        with self._conn() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM runs ORDER BY created DESC").fetchall()]
        runs = [self.get(i) for i in ids]
        return [r for r in runs if kind is None or r.kind == kind]

    def delete(self, run_id: str) -> None:
        with self._conn() as c:
            for table, col in (("events", "run_id"), ("artifacts", "run_id"), ("runs", "id")):
                c.execute(f"DELETE FROM {table} WHERE {col}=?", (run_id,))

    # ------------------------------------------------------------------ events
    def add_event(self, run_id: str, kind: str, step: int, payload: dict) -> None:
        with self._conn() as c:
            seq = c.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM events WHERE run_id=?", (run_id,)).fetchone()[0]
            c.execute("INSERT INTO events VALUES (?,?,?,?,?)", (run_id, seq, step, kind, dumps(payload)))
            c.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def events_since(self, run_id: str, after: int = -1) -> list[tuple[int, str, int, dict]]:
        """(seq, kind, step, payload) of the events after ``after``: what a live view has not seen yet."""
        with self._conn() as c:
            rows = c.execute("SELECT seq, kind, step, payload FROM events WHERE run_id=? AND seq>? ORDER BY seq",
                             (run_id, after)).fetchall()
        return [(q, k, s, json.loads(p)) for q, k, s, p in rows]

    def events(self, run_id: str, kind: str | None = None) -> list[dict]:
        with self._conn() as c:
            rows = c.execute("SELECT kind, step, payload FROM events WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()
        return [{"kind": k, "step": s, **json.loads(p)} for k, s, p in rows if kind is None or k == kind]

    # ------------------------------------------------------------------ artifacts
    def put_tensors(self, run_id: str, name: str, tensors: dict[str, torch.Tensor]) -> None:
        self.put_blob(run_id, name, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))

    def get_tensors(self, run_id: str, name: str) -> dict[str, torch.Tensor]:
        return load(self.get_blob(run_id, name))

    def put_blob(self, run_id: str, name: str, data: bytes) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO artifacts VALUES (?,?,?)", (run_id, name, sqlite3.Binary(data)))

    def get_blob(self, run_id: str, name: str) -> bytes:
        with self._conn() as c:
            row = c.execute("SELECT data FROM artifacts WHERE run_id=? AND name=?", (run_id, name)).fetchone()
        if row is None:
            raise MergecoreError(f"run {run_id} has no artifact {name!r}; it may have failed before saving it")
        return bytes(row[0])

    def artifacts(self, run_id: str) -> list[str]:
        with self._conn() as c:
            return [r[0] for r in c.execute("SELECT name FROM artifacts WHERE run_id=?", (run_id,)).fetchall()]

    # ------------------------------------------------------------------ cache (analysis results)
    def cache_get(self, key: str) -> bytes | None:
        with self._conn() as c:
            row = c.execute("SELECT data FROM cache WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def cache_put(self, key: str, data: bytes) -> None:
        if self.readonly:  # nothing is cached in a read-only store; what reads it still works
            return
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO cache VALUES (?,?,?)", (key, sqlite3.Binary(data), time.time()))
