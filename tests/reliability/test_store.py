"""The run store survives its file: a truncated, garbage, folder, read-only, locked or full ``runs.sqlite`` is
one line naming the file and what to do (exit 2 from the CLI), never a sqlite traceback; a read-only store is
still listed; a run stopped by a full disk says so; an empty ``MERGECORE_WORKSPACE`` means unset.

How each case is made:
- truncated / garbage / folder: the real file, through ``RunStore``, ``mergecore.cli.main`` in-process and one
  ``python -m mergecore runs`` subprocess (garbage);
- locked: a second connection holding an exclusive lock (``locking_mode=EXCLUSIVE`` + ``BEGIN EXCLUSIVE``, which
  blocks readers too, even in WAL); the wait is ``BUSY_TIMEOUT_S`` lowered to 0.3 s so the test is quick;
- read-only: ``chmod`` of the file or the folder, and the CLI run in a subprocess that cannot bypass permissions:
  as root it drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH / CAP_FOWNER (capset) before exec, and the test checks
  with ``os.access`` in such a process that the file really is read-only (skipped if it cannot be made so);
- full: sqlite's real SQLITE_FULL from ``PRAGMA max_page_count``, errors injected into every connection (an
  ``sqlite3.OperationalError('database or disk is full')`` or an ``OSError(ENOSPC)``) for the mid-run cases, and,
  where the test runs as root and may mount, a real 256 KiB tmpfs filled by a learning run.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_learn import tiny_bench

from mergecore.cli import main
from mergecore.errors import MergecoreError
from mergecore.learn.params import LearnParams
from mergecore.merges import get_method
from mergecore.runs import store as store_mod
from mergecore.runs.runner import create_static_run, run_learning, run_static
from mergecore.runs.store import RunStore, default_workspace

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
ELSEWHERE = "or point --workspace elsewhere"

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers


def seeded(ws: Path, running_pid: int | None = None) -> Path:
    """A workspace with one finished run (and one left 'running' by ``running_pid`` if given); WAL checkpointed."""
    store = RunStore(ws)
    rid = store.create("seed", "learned", {"k": 1})
    store.add_event(rid, "step", 1, {"loss": 1.0})
    store.finish(rid, "done", {"average": 0.5})
    if running_pid is not None:
        other = store.create("left", "learned", {"k": 2})
        store.set_pid(other, running_pid)
    return ws


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def truncated(ws: Path) -> None:
    store = RunStore(ws)
    for i in range(20):  # enough pages that half the file cuts through them
        rid = store.create(f"r{i}", "learned", {"pad": "x" * 800})
        store.put_blob(rid, "merged", os.urandom(2000))
    data = (ws / "runs.sqlite").read_bytes()
    (ws / "runs.sqlite").write_bytes(data[: len(data) // 2])


def garbage(ws: Path) -> None:
    (ws / "runs.sqlite").write_bytes(bytes(range(256)) * 40)


def folder(ws: Path) -> None:
    (ws / "runs.sqlite").mkdir()
    (ws / "runs.sqlite" / "x").write_text("x")


BROKEN = {  # name: (make it, words the one line must hold)
    "truncated": (truncated, ["corrupt", "malformed", "move it aside", "runs.sqlite.bad"]),
    "garbage": (garbage, ["corrupt", "not a database", "move it aside"]),
    "a folder": (folder, ["is a folder, not a file", "move it aside"]),
}


def assert_store_line(msg: str, ws: Path, words: list[str]) -> None:
    assert "\n" not in msg and msg.count(";") == 1, msg  # "<problem>; <fix>"
    assert str(ws / "runs.sqlite") in msg, msg
    assert msg.endswith(ELSEWHERE), msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def assert_cli_line(code: int, err: str, ws: Path, words: list[str]) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert_store_line(lines[0].removeprefix("error: "), ws, words)


def python_m_runs(ws: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergecore", "runs", "--workspace", str(ws)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120, **kw)


# ----------------------------------------------------------------------------- corrupt, folder, locked


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_store_is_one_line_in_the_library_and_the_cli(case, tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    make, words = BROKEN[case]
    make(ws)
    with pytest.raises(MergecoreError) as exc:
        RunStore(ws).list()
    assert_store_line(str(exc.value), ws, words)
    for argv in (["runs", "--workspace", str(ws)], ["compare", "some-run", "--workspace", str(ws)]):
        code, out, err = cli(argv, capsys)
        assert_cli_line(code, err, ws, words)
        assert out == ""


@pytest.mark.parametrize("case", ["garbage"])
def test_python_m_mergecore_runs_on_a_broken_store(case, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    BROKEN[case][0](ws)
    proc = python_m_runs(ws)
    assert_cli_line(proc.returncode, proc.stderr, ws, BROKEN[case][1])
    assert proc.stdout == ""


@pytest.fixture
def exclusive_lock(tmp_path):
    """A seeded store another connection holds exclusively (readers are blocked too)."""
    ws = seeded(tmp_path / "ws")
    holder = sqlite3.connect(ws / "runs.sqlite", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE runs SET name='held'")
    yield ws
    holder.execute("ROLLBACK")
    holder.close()


def test_locked_store_waits_its_busy_timeout_then_one_line(exclusive_lock, monkeypatch, capsys):
    ws = exclusive_lock
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.3, raising=False)
    words = ["locked by another process", "still busy after 0.3 s", "wait for that process"]
    t0 = time.perf_counter()
    with pytest.raises(MergecoreError) as exc:
        RunStore(ws).list()
    assert 0.25 < time.perf_counter() - t0 < 5
    assert_store_line(str(exc.value), ws, words)
    code, out, err = cli(["runs", "--workspace", str(ws)], capsys)
    assert_cli_line(code, err, ws, words)


def test_a_writer_in_wal_blocks_writes_not_reads(tmp_path):
    """WAL as today: another process's write transaction leaves listing possible; a write waits, then one line."""
    ws = seeded(tmp_path / "ws")
    holder = sqlite3.connect(ws / "runs.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE runs SET name='held'")
    try:
        store = RunStore(ws, busy_timeout=0.3)
        assert [r.name for r in store.list()] == ["seed"]
        with pytest.raises(MergecoreError) as exc:
            store.create("new", "learned", {})
        assert_store_line(str(exc.value), ws, ["locked", "0.3 s"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (sqlite3.connect(ws / "runs.sqlite").execute("PRAGMA journal_mode").fetchone()[0]) == "wal"


# ----------------------------------------------------------------------------- read-only


def _drop_dac() -> None:
    """In a child before exec: lose root's permission bypass (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER),
    from the bounding set too (root regains its permitted set from it on exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~0b1110 & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


UNPRIVILEGED = {"preexec_fn": _drop_dac} if os.geteuid() == 0 else {}


def make_readonly(ws: Path, what: str) -> None:
    """chmod the file, the folder or both, and check that a process like the CLI's cannot write there."""
    if what in ("file", "both") and (ws / "runs.sqlite").exists():
        (ws / "runs.sqlite").chmod(0o444)
    if what in ("folder", "both"):
        ws.chmod(0o555)
    target = ws / "runs.sqlite" if what == "file" else ws
    probe = subprocess.run([sys.executable, "-c", f"import os, sys; sys.exit(os.access({str(target)!r}, os.W_OK))"],
                           **UNPRIVILEGED)
    if probe.returncode != 0:
        restore(ws)
        pytest.skip("this user cannot be kept from writing the file (permissions are bypassed)")


def restore(ws: Path) -> None:
    ws.chmod(0o755)
    if (ws / "runs.sqlite").exists():
        (ws / "runs.sqlite").chmod(0o644)


READ_ONLY = textwrap.dedent('''
    import sys
    from mergecore.cli import main
    from mergecore.errors import MergecoreError
    from mergecore.runs.store import RunStore
    try:
        main(["runs", "--workspace", sys.argv[1]])  # what python -m mergecore runs calls
    except SystemExit as exc:
        assert exc.code == 0, exc.code
    try:
        RunStore(sys.argv[1]).create("new", "learned", {})
    except MergecoreError as exc:
        print("refused:", exc, file=sys.stderr)
''')


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_store_is_listed_and_refuses_writes(what, tmp_path):
    """Reading needs no write: ``runs`` lists the runs (one left running by a dead process shown interrupted, as
    the next writable open would mark it), exit 0; a write is one line naming the file and why."""
    ws = seeded(tmp_path / "ws", running_pid=dead_pid())
    make_readonly(ws, what)
    try:
        proc = subprocess.run([sys.executable, "-c", READ_ONLY, str(ws)], cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=120, **UNPRIVILEGED)
    finally:
        restore(ws)
    assert proc.returncode == 0, proc.stderr
    rows = sorted(line.split()[1:4] for line in proc.stdout.splitlines())
    assert rows == [["learned", "done", "seed"], ["learned", "interrupted", "left"]], proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: "), proc.stderr
    reason = "the file is not writable" if what == "file" else "its folder is not writable"
    assert_store_line(lines[0].removeprefix("refused: "), ws, ["is read-only", reason, "make it and its folder writable"])
    assert len(RunStore(ws).list()) == 2


def test_no_store_in_a_read_only_folder_is_one_line(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    make_readonly(ws, "folder")
    try:
        proc = python_m_runs(ws, **UNPRIVILEGED)
    finally:
        restore(ws)
    assert_cli_line(proc.returncode, proc.stderr, ws, ["read-only", "its folder is not writable"])
    assert not (ws / "runs.sqlite").exists()


def test_a_read_only_store_refuses_a_run_before_any_work(tiny_setup, tmp_path, monkeypatch):
    """The runner asks first (simulated here: the store reports its file not writable; the real permission
    cases are the subprocess tests above)."""
    ws = seeded(tmp_path / "ws")
    monkeypatch.setattr(RunStore, "_readonly_reason", lambda self: "the file is not writable", raising=False)
    store = RunStore(ws)
    bench = tiny_bench(tiny_setup)
    called = []
    monkeypatch.setattr("mergecore.runs.runner.Learner.run", lambda *a, **k: called.append(1))
    for run in (lambda: run_learning(bench, LearnParams(steps=2), store),
                lambda: run_static(bench, "task_arithmetic", store=store)):
        with pytest.raises(MergecoreError) as exc:
            run()
        assert_store_line(str(exc.value), ws, ["is read-only", "the file is not writable"])
    assert not called
    monkeypatch.undo()
    assert [r.name for r in RunStore(ws).list()] == ["seed"]


# ----------------------------------------------------------------------------- full


def test_real_sqlite_full_is_one_line(tmp_path, monkeypatch):
    """SQLITE_FULL from sqlite itself: the store may not grow past its pages (PRAGMA max_page_count)."""
    ws = seeded(tmp_path / "ws")
    real = sqlite3.connect

    def capped(*args, **kw):
        conn = real(*args, **kw)
        conn.execute("PRAGMA max_page_count = 8")
        return conn

    monkeypatch.setattr(sqlite3, "connect", capped)
    store = RunStore(ws)
    rid = store.list()[0].id
    with pytest.raises(MergecoreError) as exc:
        store.put_blob(rid, "big", os.urandom(100_000))
    assert_store_line(str(exc.value), ws, ["the disk holding the run store", "is full", "free some space"])
    assert [r.name for r in store.list()] == ["seed"]  # reads still work


class FullDisk:
    """Every new sqlite connection's writes fail as a full disk does, once ``steps`` step events are stored;
    ``updates`` too (else a short status update still fits, as it often does on a real full disk)."""

    def __init__(self, monkeypatch, error: Exception, steps: int, updates: bool):
        self.error, self.steps, self.updates, self.stored = error, steps, updates, 0
        self.real = sqlite3.connect
        monkeypatch.setattr(sqlite3, "connect", self.connect)

    def refuses(self, sql: str) -> bool:
        word = sql.split()[0]
        return self.stored >= self.steps and (word == "INSERT" or (self.updates and word == "UPDATE"))

    def connect(self, *args, **kw):
        disk, conn = self, self.real(*args, **kw)

        class Conn:
            step = False  # this transaction stores a step event

            def execute(self, sql, params=()):
                if disk.refuses(sql):
                    raise disk.error
                self.step |= sql.startswith("INSERT INTO events") and params[3] == "step"
                return conn.execute(sql, params)

            def __enter__(self):
                conn.__enter__()
                return self

            def __exit__(self, *exc):
                out = conn.__exit__(*exc)
                disk.stored += self.step and exc[0] is None
                return out

            def __getattr__(self, name):
                return getattr(conn, name)

        return Conn()


FULL_ERRORS = {"sqlite": lambda: sqlite3.OperationalError("database or disk is full"),
               "ENOSPC": lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))}


@pytest.mark.parametrize("error", list(FULL_ERRORS))
def test_full_disk_mid_run_stops_it_and_says_so(error, tiny_setup, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    store = RunStore(ws)
    bench = tiny_bench(tiny_setup)
    FullDisk(monkeypatch, FULL_ERRORS[error](), steps=2, updates=False)
    with pytest.raises(MergecoreError) as exc:
        run_learning(bench, LearnParams(steps=6, batch_size=4, eval_every=0), store)
    assert_store_line(str(exc.value), ws, ["the disk holding the run store", "is full", "stopped after step 2",
                                           "it is marked interrupted", "free some space"])
    monkeypatch.undo()
    (run,) = RunStore(ws).list()
    assert run.status == "interrupted", run
    assert "disk holding the run store was full after step 2" in run.message
    assert [e["step"] for e in RunStore(ws).events(run.id, "step")] == [1, 2]


def test_full_disk_that_refuses_the_status_too_says_when_it_will_be_marked(tiny_setup, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    store = RunStore(ws)
    FullDisk(monkeypatch, FULL_ERRORS["sqlite"](), steps=1, updates=True)
    with pytest.raises(MergecoreError) as exc:
        run_learning(tiny_bench(tiny_setup), LearnParams(steps=6, batch_size=4, eval_every=0), store)
    assert_store_line(str(exc.value), ws, ["is full", "stopped after step 1", "could not be marked interrupted",
                                           "next open of the store"])
    monkeypatch.undo()
    (run,) = RunStore(ws).list()
    assert run.status == "running"  # this process is alive: the next open after it ends marks it
    with sqlite3.connect(ws / "runs.sqlite") as c:
        c.execute("UPDATE runs SET pid=?", (dead_pid(),))
    assert RunStore(ws).get(run.id).status == "interrupted"


def test_full_disk_in_a_static_merge_job(tiny_setup, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    store = RunStore(ws)
    bench = tiny_bench(tiny_setup)
    run_id = create_static_run(bench, "task_arithmetic", get_method("task_arithmetic").params_cls(), store)
    FullDisk(monkeypatch, FULL_ERRORS["ENOSPC"](), steps=0, updates=False)
    with pytest.raises(MergecoreError) as exc:
        run_static(bench, "task_arithmetic", store=store, run_id=run_id)
    assert_store_line(str(exc.value), ws, ["is full", "stopped before its merge was saved", "marked interrupted"])
    monkeypatch.undo()
    assert RunStore(ws).get(run_id).status == "interrupted"


def test_cli_learn_on_a_full_disk_exits_2_with_one_line(tiny_setup, tmp_path, monkeypatch, capsys):
    ws = tmp_path / "ws"
    bench = tiny_bench(tiny_setup)
    monkeypatch.setattr("mergecore.forward.spec.RunSpec.open", lambda self: bench)
    RunStore(ws)
    FullDisk(monkeypatch, FULL_ERRORS["sqlite"](), steps=2, updates=False)
    code, out, err = cli(["learn", "--workspace", str(ws), "--steps", "5", "--batch-size", "4", "--eval-every", "0",
                          "--json"], capsys)
    assert_cli_line(code, err, ws, ["is full", "stopped after step 2", "marked interrupted", "free some space"])
    assert out == ""


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB file system (root only, where mounting is allowed)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount is not permitted here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_disk_mid_run(tiny_setup, tiny_tmpfs, capsys):
    ws = tiny_tmpfs / "ws"
    store = RunStore(ws)
    bench = tiny_bench(tiny_setup)
    free = shutil.disk_usage(tiny_tmpfs).free
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (free - 64 * 1024))  # 64 KiB left: a few WAL frames
    with pytest.raises(MergecoreError) as exc:
        run_learning(bench, LearnParams(steps=400, batch_size=4, eval_every=0), store)
    msg = str(exc.value)
    assert_store_line(msg, ws, ["the disk holding the run store", "is full", "stopped after step"])
    (tiny_tmpfs / "filler").unlink()
    (run,) = RunStore(ws).list()
    assert 0 < len(RunStore(ws).events(run.id, "step")) < 400
    if "it is marked interrupted" in msg:
        assert run.status == "interrupted" and "disk holding the run store was full" in run.message
    else:  # the status write failed too: marked once the process that ran it is gone
        assert "next open of the store" in msg and run.status == "running"
        with sqlite3.connect(ws / "runs.sqlite") as c:
            c.execute("UPDATE runs SET pid=?", (dead_pid(),))
    code, out, err = cli(["runs", "--workspace", str(ws)], capsys)
    assert code == 0 and err == "" and "interrupted" in out


# ----------------------------------------------------------------------------- MERGECORE_WORKSPACE


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_workspace_variable_means_unset(value, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MERGECORE_WORKSPACE", value)
    monkeypatch.chdir(tmp_path)
    assert default_workspace() == tmp_path / "workspace"
    code, out, err = cli(["runs"], capsys)
    assert code == 0 and err == ""
    assert (tmp_path / "workspace" / "runs.sqlite").is_file() and not (tmp_path / "runs.sqlite").exists()


# ----------------------------------------------------------------------------- the app's jobs


def test_app_jobs_on_a_full_disk_leave_no_run_running(tiny_setup, tmp_path, monkeypatch):
    """The server cannot write a job's spec (ENOSPC injected): one line, and the runs it created are 'failed',
    not left 'running' under the server's live pid."""
    from mergecore.forward.spec import RunSpec
    from mergecore.runs.jobs import JobSpec, Workers

    store = RunStore(tmp_path / "ws")
    workers = Workers(store)

    def full(self, folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(JobSpec, "write", full)
    with pytest.raises(MergecoreError) as exc:
        workers.start_learning(tiny_bench(tiny_setup), RunSpec.of(["a"]), [LearnParams(steps=2), LearnParams(steps=3)])
    msg = str(exc.value)
    assert "\n" not in msg and "cannot start the worker" in msg and os.strerror(errno.ENOSPC) in msg
    assert msg.endswith("free some space, " + ELSEWHERE), msg
    assert [r.status for r in store.list()] == ["failed", "failed"]


def test_no_spare_worker_for_a_read_only_store(tmp_path, monkeypatch):
    from mergecore.runs.jobs import Workers

    ws = seeded(tmp_path / "ws")
    monkeypatch.setattr(RunStore, "_readonly_reason", lambda self: "the file is not writable", raising=False)
    workers = Workers(RunStore(ws), spare=True)
    try:
        workers.ensure_spare()
        assert workers.spare is None and not (ws / "jobs").exists()
    finally:
        if workers.spare is not None:
            workers.spare.kill()
            workers.spare.wait()
