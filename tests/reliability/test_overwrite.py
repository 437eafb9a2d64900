"""A user's files are never deleted or overwritten without being asked (issue 25, item 1).

One rule for every command that writes a folder (``learn --out``, ``merge --out``, ``analyze --out``, ``export
--out``; ``mergecore.files.check_target``): an existing non-empty target is refused in one line unless
``--force``; with ``--force`` only a folder mergecore wrote (its ``.mergecore-folder`` marker) is replaced;
never the workspace, nor a folder that is or holds the run's adapters or task files; a file target is one
line; all of it before any model is loaded. Through the real CLI entry point, in-process.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import label_task_files, make_adapter, tiny_bert_base
from mergecore.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

COMMANDS = ("learn", "merge", "analyze", "export")
MARKER = ".mergecore-folder"  # mergecore.files.MARKER (spelled out: the test must import on the old code too)


def cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    got = capsys.readouterr()
    return exc.value.code, got.out, got.err


def refused(code: int, err: str, *words: str) -> None:
    """Exit 2 with one stderr line ``error: ...`` holding every word (the contract for bad input)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for w in words:
        assert w in lines[0], (w, lines[0])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (names and content hashes): what must survive a refusal untouched."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def kit(tmp_path_factory, one_thread):
    """Tiny BERT adapters + task files, a workspace and one real run folder (merge --out)."""
    root = tmp_path_factory.mktemp("overwrite")
    base = tiny_bert_base(root / "base")
    adapters = root / "adapters"
    dirs = [make_adapter(base, adapters / "a0", 2, 2, ["query", "value"], seed=1),
            make_adapter(base, adapters / "a1", 3, 2, ["query", "value"], seed=2)]
    tasks = label_task_files(root / "data")
    ws, run = root / "ws", root / "run"
    src = ["--adapters", *dirs, "--task-files", tasks, "--workspace", ws, "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in ["merge", *src, "--method", "task_arithmetic", "--out", run]])
    assert exc.value.code == 0 and (run / "run.json").is_file()
    return {"root": root, "dirs": dirs, "tasks": tasks, "ws": ws, "run": run, "src": src}


def argv(kit, command: str, out, *extra) -> list:
    """A small real invocation of ``command`` writing ``out``."""
    head = {"learn": ["learn", *kit["src"], "--steps", "1"],
            "merge": ["merge", *kit["src"], "--method", "task_arithmetic"],
            "analyze": ["analyze", *kit["src"], "--what", "spectra"],
            "export": ["export", "--run", kit["run"], "--workspace", kit["ws"], "--device", "cpu"]}[command]
    return [*head, "--out", out, *extra]


@pytest.fixture
def no_work(monkeypatch):
    """Any model loading, learning or merging fails the test: a refusal must come before the work."""
    import mergecore.cli.analyze as ca
    import mergecore.cli.export as cx
    import mergecore.cli.learn as cl
    import mergecore.cli.merge as cm

    def work(*args, **kwargs):
        raise AssertionError("work began before the target was checked")

    from mergecore.forward.spec import RunSpec

    monkeypatch.setattr(RunSpec, "open", work)  # every command opens its workbench from its RunSpec
    for module, names in ((cl, ("run_learning",)), (cm, ("run_static",)), (ca, ("compute_lens",)),
                          (cx, ("open_inputs",))):
        for name in names:
            monkeypatch.setattr(module, name, work)


def user_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "notes" / "a.txt").write_text("keep me")
    return folder


# ----------------------------------------------------------------------------- a user's folder


@pytest.mark.parametrize("command", COMMANDS)
def test_a_users_folder_or_file_is_refused_before_any_work(kit, command, tmp_path, capsys, no_work):
    """Without --force: 'already exists'; with --force: still refused (mergecore did not write it); a file
    target: one line. Nothing is touched and no model is loaded (``no_work``)."""
    mine = user_folder(tmp_path)
    before = snapshot(mine)
    code, _, err = cli(argv(kit, command, mine), capsys)
    refused(code, err, str(mine.resolve()), "already exists", "--force")
    assert snapshot(mine) == before
    code, _, err = cli(argv(kit, command, mine, "--force"), capsys)
    refused(code, err, str(mine.resolve()), "mergecore did not write", MARKER, "remove it yourself")
    assert snapshot(mine) == before
    target = tmp_path / "results.txt"
    target.write_text("mine")
    code, _, err = cli(argv(kit, command, target, "--force"), capsys)
    refused(code, err, str(target.resolve()), "is a file", "choose a folder path")
    assert target.read_text() == "mine"


# ----------------------------------------------------------------------------- the workspace and the run's inputs


@pytest.mark.parametrize("command", COMMANDS)
def test_the_workspace_is_never_replaced(kit, command, capsys, no_work):
    ws = kit["ws"]
    before = snapshot(ws)
    for out in (ws, ws.parent):  # the workspace, and a folder holding it
        code, _, err = cli(argv(kit, command, out, "--force"), capsys)
        refused(code, err, "workspace", str(ws.resolve()), "not even with --force")
        assert snapshot(ws) == before and (ws / "runs.sqlite").is_file()


def test_learn_into_its_own_new_workspace_keeps_the_store(kit, tmp_path, capsys, no_work):
    """`learn --workspace W --out W` (W new): W would be the store's folder; refused before it is made."""
    ws = tmp_path / "fresh"
    code, _, err = cli(["learn", *kit["src"][:-4], "--workspace", ws, "--out", ws], capsys)
    refused(code, err, "workspace")
    assert not ws.exists()


def test_a_mergecore_folder_holding_a_run_store_is_not_replaced(kit, tmp_path, capsys, no_work):
    out = tmp_path / "exp"
    (out / "ws").mkdir(parents=True)
    (out / MARKER).write_text("")
    shutil.copy(kit["ws"] / "runs.sqlite", out / "ws" / "runs.sqlite")
    code, _, err = cli(argv(kit, "merge", out, "--force"), capsys)
    refused(code, err, "run store", "runs.sqlite")
    assert (out / "ws" / "runs.sqlite").is_file()


@pytest.mark.parametrize("command", COMMANDS)
def test_the_runs_adapters_and_task_files_are_never_replaced(kit, command, capsys, no_work):
    """An adapter folder, the folder holding the adapters, the folder of the task files: refused with --force
    even when they carry mergecore's marker (as an unpacked upload does). ``export`` finds them in its run."""
    a0, adapters, data = kit["dirs"][0], kit["dirs"][0].parent, kit["tasks"].parent
    for folder in (a0, adapters, data):
        (folder / MARKER).write_text("")
    before = snapshot(adapters), snapshot(data)
    try:
        for out, what in ((a0, "adapter folder"), (adapters, "adapter folder"), (data, "task")):
            code, _, err = cli(argv(kit, command, out, "--force"), capsys)
            refused(code, err, str(out.resolve()), what, "not even with --force")
            assert (snapshot(adapters), snapshot(data)) == before
    finally:
        for folder in (a0, adapters, data):
            (folder / MARKER).unlink()


@pytest.mark.parametrize("command", ("analyze", "export"))
def test_the_run_folder_read_is_never_replaced(kit, command, capsys, no_work):
    before = snapshot(kit["run"])
    head = {"analyze": ["analyze", "--run", kit["run"], "--workspace", kit["ws"], "--what", "spectra"],
            "export": ["export", "--run", kit["run"], "--workspace", kit["ws"]]}[command]
    code, _, err = cli([*head, "--out", kit["run"], "--force"], capsys)
    refused(code, err, "run folder", "not even with --force")
    assert snapshot(kit["run"]) == before


# ----------------------------------------------------------------------------- what mergecore wrote


@pytest.mark.parametrize("command", COMMANDS)
def test_force_replaces_a_folder_mergecore_wrote(kit, command, tmp_path, capsys):
    """Written once (with the marker), refused a second time without --force, replaced with it; an empty
    existing folder is written into."""
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli(argv(kit, command, out), capsys)
    assert code == 0, err
    assert (out / MARKER).is_file()
    (out / "stale.txt").write_text("from the first write")
    code, _, err = cli(argv(kit, command, out), capsys)
    refused(code, err, "already exists", "--force")
    assert (out / "stale.txt").is_file()
    code, _, err = cli(argv(kit, command, out, "--force"), capsys)
    assert code == 0, err
    assert not (out / "stale.txt").exists() and (out / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial or old sibling left
    if command in ("learn", "merge"):
        assert json.loads((out / "run.json").read_text())["id"]


def test_the_target_is_checked_again_at_the_swap(tmp_path):
    """A user's folder that appears while mergecore works is not replaced at the rename (force or not)."""
    from mergecore.errors import MergecoreError
    from mergecore.files import atomic_folder

    out = tmp_path / "out"
    with pytest.raises(MergecoreError, match="mergecore did not write"):
        with atomic_folder(out, True) as tmp:
            (tmp / "new.txt").write_text("new")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----------------------------------------------------------------------------- files.check_target's lines (pinned by
# mutation testing, stop 24): every refusal word for word, the default label, the swap's roll-back


def test_check_target_refusals_word_for_word(tmp_path):
    from mergecore.errors import MergecoreError
    from mergecore.files import check_target

    root = tmp_path.resolve()

    def line(out, overwrite, protect=(), *what) -> str:
        with pytest.raises(MergecoreError) as info:
            check_target(out, overwrite, protect, *what)
        return str(info.value)

    (root / "f.txt").write_text("x")
    assert line(root / "f.txt", True) == f"export target {root / 'f.txt'} is a file; choose a folder path"
    ws = root / "ws"
    ws.mkdir()
    never = "which mergecore never replaces (not even with --force)"
    assert line(ws, True, [("the workspace", ws)], "run folder target") == (
        f"run folder target {ws} is the workspace, {never}; choose another folder")
    assert line(root, True, [("the workspace", ws)], "run folder target") == (
        f"run folder target {root} holds the workspace {ws}, {never}; choose another folder")
    (ws / "runs.sqlite").write_text("")
    assert line(ws, True) == f"export target {ws} is a workspace (it holds runs.sqlite), {never}; choose another folder"
    mine = root / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("a")
    assert line(mine, False) == (f"export target {mine} already exists; choose a new folder or pass --force "
                                 "(overwrite=True)")
    assert line(mine, True) == (f"export target {mine} holds files mergecore did not write (it has no {MARKER}), "
                                "and --force replaces only a folder mergecore wrote; choose another folder or "
                                "remove it yourself")
    (mine / MARKER).write_text("")
    (mine / "ws").mkdir()
    (mine / "ws" / "runs.sqlite").write_text("")
    assert line(mine, True) == (f"export target {mine} holds a run store {mine / 'ws' / 'runs.sqlite'}, which "
                                "mergecore never replaces (not even with --force); move it out or choose another "
                                "folder")


def test_check_target_allows_new_empty_and_mergecore_folders(tmp_path):
    from mergecore.files import check_target

    root = tmp_path.resolve()
    assert check_target(root / "new" / "out", False) == root / "new" / "out"
    (root / "empty").mkdir()
    assert check_target(root / "empty", False, [("the workspace", root / "ws")]) == root / "empty"
    (root / "ours").mkdir()
    (root / "ours" / MARKER).write_text("")
    (root / "ours" / "run.json").write_text("{}")
    assert check_target(root / "ours", True, [("the workspace", root / "ws")]) == root / "ours"
    assert check_target(Path("~") / "no-such-mergecore-out", False) == (Path.home() / "no-such-mergecore-out").resolve()


def test_a_failed_swap_puts_the_old_folder_back(tmp_path):
    """The rename of the new folder fails (here: it vanished): the folder it was replacing is restored whole."""
    from mergecore.files import atomic_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("")
    (out / "run.json").write_text("old")
    with pytest.raises(OSError):
        with atomic_folder(out, True) as tmp:
            shutil.rmtree(tmp)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "run.json"] and (out / "run.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
