"""Bounded work on untrusted inputs (issue 25, items 4 and 5): regex keys, task files, mappings, prompts, CSV
cells, nested JSON, zip uploads and the folders they unpack into. Every probe either finishes quickly with
PEFT's answer or is refused in one line; none hangs, grows memory without bound or prints a file's contents.

Each test runs under a hard deadline (SIGALRM, which also interrupts ``re``'s matcher and a blocking open of
a FIFO) and, where the old code grew memory, under an address-space limit, so a regression fails instead of
hanging or exhausting the machine.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import resource
import shutil
import signal
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from mergecore.errors import MergecoreError

ROOT = Path(__file__).resolve().parents[2]
DEMO_ADAPTER = ROOT / "mergecore" / "demo" / "adapters" / "sentiment"
MODULE = "base_model.model.encoder.layer.0.attention.self.query"


class Deadline(BaseException):
    """Not an OSError (as TimeoutError is) nor an Exception: no ``except`` in the code under test swallows it."""


def deadline(seconds: int):
    """A test's own deadline (the default is 30 s)."""
    def mark(fn):
        fn.deadline_s = seconds
        return fn
    return mark


@pytest.fixture(autouse=True)
def hard_deadline(request):
    """Fail (not hang) a probe that runs past its deadline."""
    seconds = getattr(request.function, "deadline_s", 30)

    def expired(*_):
        raise Deadline(f"the probe ran past its {seconds} s deadline")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def memory_bound(extra: int = 2**30):
    """Limit this process's address space to what it uses now plus ``extra`` (a probe that reads without bound
    gets MemoryError instead of exhausting the machine)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def one_line(exc_info, *words: str) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, MergecoreError), repr(exc_info.value)
    assert "\n" not in msg and ";" in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- regex keys (rank_pattern / alpha_pattern)


def test_catastrophic_key_gets_peft_answer_at_once():
    """``(.|.)*Z`` backtracks without end in ``re`` (PEFT's matcher); the bounded match says "no match" at once."""
    from mergecore.peft_config import module_rank_alpha, pattern_key

    start = time.perf_counter()
    assert pattern_key({"(.|.)*Z": 4, "query": 2}, MODULE, "rank_pattern", "cfg.json") == "query"
    assert module_rank_alpha({"r": 8, "lora_alpha": 16, "rank_pattern": {"(.|.)*Z": 4}}, MODULE, "cfg.json") == (8, 16.0)
    assert time.perf_counter() - start < 1.0


def test_key_over_the_time_bound_is_refused_in_one_line_naming_key_and_file():
    from mergecore.peft_config import module_rank_alpha

    start = time.perf_counter()
    with pytest.raises(MergecoreError) as info:
        module_rank_alpha({"r": 8, "alpha_pattern": {r"(?:(?:.*?)*)*\d\d\d": 4}}, MODULE, "up/a/adapter_config.json")
    one_line(info, "up/a/adapter_config.json", "alpha_pattern", r"(?:(?:.*?)*)*\\d\\d\\d", "simplify")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("key, words", [
    ("((a{100}){100}){100}", ["repeats more than"]),  # unrolled by the compiler: a second and 1e6 states
    ("x" * 1001, ["longer than 1000"]),
])
def test_keys_that_compile_slowly_are_refused(key, words):
    from mergecore.peft_config import pattern_key

    start = time.perf_counter()
    with pytest.raises(MergecoreError) as info:
        pattern_key({key: 4}, MODULE, "rank_pattern", "cfg.json")
    one_line(info, "cfg.json", "rank_pattern", *words)
    assert time.perf_counter() - start < 1.0


def test_adapter_with_a_catastrophic_key_loads_at_once(tmp_path):
    """Through the loader: the demo adapter with ``(.|.)*Z`` in rank_pattern (it matches no module)."""
    from mergecore.adapters import load_adapters

    folder = tmp_path / "sentiment"
    shutil.copytree(DEMO_ADAPTER, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"(.|.)*Z": 4}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    start = time.perf_counter()
    adapters = load_adapters([folder])
    assert time.perf_counter() - start < 5.0 and len(adapters.adapters) == 1


def test_adapter_config_nested_100000_levels_is_one_line(tmp_path):
    from mergecore.peft_config import read_config

    write(tmp_path / "adapter_config.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(MergecoreError) as info:
        read_config(tmp_path)
    one_line(info, "adapter_config.json", "deeper than")


@deadline(10)
def test_adapter_config_that_is_a_fifo_is_refused(tmp_path):
    from mergecore.peft_config import read_config

    os.mkfifo(tmp_path / "adapter_config.json")
    with pytest.raises(MergecoreError) as info:
        read_config(tmp_path)
    one_line(info, "adapter_config.json", "not a regular file")


# ----------------------------------------------------------------------------- task files and mappings


def load(path, **cols):
    from mergecore.data.taskfiles import Columns, load_split

    return load_split(path, Columns(**cols))


def test_task_file_naming_dev_zero_is_refused_without_reading():
    with memory_bound(), pytest.raises(MergecoreError) as info:
        load("/dev/zero")
    one_line(info, "/dev/zero", "not a regular file")


@deadline(10)
def test_task_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "rows.csv")
    with pytest.raises(MergecoreError) as info:
        load(tmp_path / "rows.csv")
    one_line(info, "rows.csv", "not a regular file")


def test_task_file_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "train.csv").mkdir()
    with pytest.raises(MergecoreError) as info:
        load(tmp_path / "train.csv")
    one_line(info, "train.csv", "is a folder")


def test_task_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    from mergecore.data import taskfiles

    monkeypatch.setattr(taskfiles, "MAX_FILE_BYTES", 1000, raising=False)
    path = write(tmp_path / "big.csv", "sentence,label\n" + "good,1\n" * 500)
    with pytest.raises(MergecoreError) as info:
        load(path)
    one_line(info, "big.csv", "over the", "limit")


@deadline(10)
@pytest.mark.parametrize("kind, words", [("dev-zero", "not a regular file"), ("fifo", "not a regular file"),
                                         ("folder", "is a folder"), ("nested", "deeper than")])
def test_task_mapping_is_bounded(tmp_path, kind, words):
    from mergecore.data.sources import TaskSource, load_tasks

    path = Path("/dev/zero") if kind == "dev-zero" else tmp_path / "tasks.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "nested":
        write(path, "[" * 100_000 + "]" * 100_000)
    with memory_bound(), pytest.raises(MergecoreError) as info:
        load_tasks(["sent"], TaskSource("files", mapping=str(path)))
    one_line(info, str(path), words)


def test_jsonl_row_nested_100000_levels_is_one_line(tmp_path):
    path = write(tmp_path / "rows.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": ' + "[" * 100_000
                 + "]" * 100_000 + ', "label": 0}\n')
    with pytest.raises(MergecoreError) as info:
        load(path)
    one_line(info, "rows.jsonl line 2", "deeper than")


def test_csv_cell_over_128k_characters_loads(tmp_path):
    """The csv module's default field limit (128K characters) refused real long documents with _csv.Error."""
    long = "word " * 60_000
    path = write(tmp_path / "docs.csv", f'sentence,label\n"{long}",1\nshort,0\n')
    assert load(path).inputs == ((long.strip(),), ("short",))
    tsv = write(tmp_path / "docs.tsv", f"sentence\tlabel\n{long}\t1\n")
    assert load(tsv).inputs == ((long.strip(),),)


def test_csv_cell_over_the_limit_is_one_line_naming_file_and_line(tmp_path, monkeypatch):
    from mergecore.data import taskfiles

    monkeypatch.setattr(taskfiles, "MAX_FIELD_CHARS", 1000, raising=False)
    path = write(tmp_path / "docs.csv", "sentence,label\nok,1\n" + '"' + "x" * 200_000 + '",1\n')
    with pytest.raises(MergecoreError) as info:
        load(path)
    one_line(info, "docs.csv line 3", "cell over")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ""])
def test_errors_never_print_a_line_of_a_file_that_is_not_a_table(tmp_path, suffix):
    """A task file naming /etc/passwd (here a copy) by mistake: the error names the file, not its first line."""
    passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    path = write(tmp_path / f"passwd{suffix}", passwd)
    with pytest.raises(MergecoreError) as info:
        load(path)
    msg = one_line(info, str(path), "missing column(s) sentence, label")
    for part in ("root", "/bin/bash", "daemon", "nologin"):
        assert part not in msg.replace(str(path), ""), msg


def test_long_label_values_are_cut_in_errors(tmp_path):
    path = write(tmp_path / "t.csv", "sentence,label\ngood," + "s3cret" * 100 + "\n")
    with pytest.raises(MergecoreError) as info:
        load(path)
    assert len(one_line(info, "t.csv row 2")) < 300


# ----------------------------------------------------------------------------- prompt templates


@pytest.mark.parametrize("prompt, words", [
    ("{0:>300000000}", ["{0:>300000000}", "has a format spec or conversion"]),
    ("{0!r}", ["{0!r}", "has a format spec or conversion"]),
    ("{0:{0}}", ["has a format spec or conversion"]),
    ("{0.__class__}", ["{0.__class__}", "has no column"]),
    ("{0[0]}", ["{0[0]}", "has no column"]),
    ("{²}", ["{²}", "has no column"]),
    ("{0}" * 17, ["17 placeholders"]),
])
def test_prompt_accepts_only_bare_positional_fields(prompt, words):
    from mergecore.data.taskfiles import check_prompt

    tracemalloc.start()
    try:
        with pytest.raises(MergecoreError) as info:
            check_prompt("sent", prompt, ("review",))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(info, "'sent'", *words)
    assert peak < 10 * 2**20, f"the check allocated {peak / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------- zip uploads


def zip_bytes(entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def patched(data: bytes, local_offset: int, central_offset: int, value: bytes) -> bytes:
    """``data`` with ``value`` written at the given offsets of every local and central header."""
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        i = out.find(sig)
        while i >= 0:
            out[i + off:i + off + len(value)] = value
            i = out.find(sig, i + 4)
    return bytes(out)


def extract(data: bytes, dest: Path) -> str:
    from mergecore.safezip import extract_zip

    with pytest.raises(MergecoreError) as info:
        extract_zip(data, dest / "up")
    assert not (dest / "up").exists() and list(dest.iterdir()) == []
    return one_line(info)


def test_encrypted_entry_is_one_line(tmp_path):
    data = zip_bytes({"a/adapter_config.json": b"{}"}, zipfile.ZIP_STORED)
    flags = (zipfile.ZipFile(io.BytesIO(data)).infolist()[0].flag_bits | 1).to_bytes(2, "little")
    assert "encrypted" in extract(patched(data, 6, 8, flags), tmp_path)


def test_unsupported_compression_method_is_one_line(tmp_path):
    data = patched(zip_bytes({"a/adapter_config.json": b"{}"}, zipfile.ZIP_STORED), 8, 10, (93).to_bytes(2, "little"))
    assert "compression method 93" in extract(data, tmp_path)


def test_corrupt_deflate_stream_is_one_line(tmp_path):
    payload = bytes(range(256)) * 64
    data = bytearray(zip_bytes({"a/adapter_model.safetensors": payload}))
    start = 30 + len("a/adapter_model.safetensors")  # the first local header has no extra field
    data[start:start + 8] = b"\xff" * 8
    assert "corrupt" in extract(bytes(data), tmp_path)


@deadline(60)
def test_zip_bomb_is_refused_before_unpacking(tmp_path):
    """About 0.5 MiB of zip that unpacks to 511 MiB: refused by its ratio, nothing written."""
    buf = io.BytesIO()
    zero = bytes(2**20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("a/adapter_model.safetensors", "w") as f:
        for _ in range(511):
            f.write(zero)
    data = buf.getvalue()
    assert len(data) < 600 * 2**10
    start = time.perf_counter()
    assert "times its size" in extract(data, tmp_path)
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------------------- upload folders in the app


def unpacked_folders(ws: Path) -> list[Path]:
    return sorted(p for p in (ws / "uploads").glob("*") if p.is_dir()) if (ws / "uploads").is_dir() else []


@deadline(600)
def test_upload_folder_is_removed_when_replaced_cleared_or_the_session_ends(tmp_path, monkeypatch):
    """AppTest: a new upload removes the previous one's folder, clearing removes it, and so does the end of the
    browser session (its session state garbage collected)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from mergecore.safezip import Unpacked

    ws = tmp_path / "ws"
    monkeypatch.setenv("MERGECORE_WORKSPACE", str(ws))
    st.cache_resource.clear()
    files = {f"sentiment/{p.name}": p.read_bytes() for p in DEMO_ADAPTER.iterdir() if p.is_file()}
    data = zip_bytes(files)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    at.file_uploader(key="adapter_zip").upload("a.zip", data, "application/zip").run()
    assert not at.exception, at.exception
    first = unpacked_folders(ws)
    assert len(first) == 1 and (first[0] / "sentiment" / "adapter_config.json").is_file()
    assert at.text_area(key="adapter_text").value == str(first[0] / "sentiment")

    at.file_uploader(key="adapter_zip").upload("b.zip", data, "application/zip").run()
    second = unpacked_folders(ws)
    assert len(second) == 1 and second != first and not first[0].exists()

    at.file_uploader(key="adapter_zip").clear().run()
    assert unpacked_folders(ws) == [] and at.text_area(key="adapter_text").value == ""

    at.file_uploader(key="adapter_zip").upload("c.zip", data, "application/zip").run()
    assert len(unpacked_folders(ws)) == 1
    _, held = at.session_state["upload"]
    assert isinstance(held, Unpacked)
    del held, at  # the session ends: Streamlit drops its state
    gc.collect()
    assert unpacked_folders(ws) == []


def test_a_refused_upload_shows_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    ws = tmp_path / "ws"
    monkeypatch.setenv("MERGECORE_WORKSPACE", str(ws))
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    data = patched(zip_bytes({"a/adapter_config.json": b"{}"}, zipfile.ZIP_STORED), 8, 10, (93).to_bytes(2, "little"))
    at.file_uploader(key="adapter_zip").upload("bad.zip", data, "application/zip").run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error if "compression method 93" in e.value]
    assert unpacked_folders(ws) == []


# ----------------------------------------------------------------------------- files.read_regular_file and read_json
# (pinned by mutation testing, stop 24: exact lines, inclusive limits, the checks on the open descriptor)


class _StatSwapped:
    """``os`` as mergecore.files sees it, whose ``stat`` answers for ``stand_in``: the path is swapped for something
    else between the check and the open, so only the checks on the open descriptor can refuse it."""

    def __init__(self, stand_in: Path):
        self._stand_in = stand_in

    def stat(self, path):
        return os.stat(self._stand_in)

    def __getattr__(self, name):
        return getattr(os, name)


def test_read_regular_file_limit_is_inclusive_and_the_line_gives_both_sizes(tmp_path):
    from mergecore.files import read_regular_file

    path = tmp_path / "t.csv"
    path.write_bytes(b"x" * 1000)
    assert read_regular_file(path, 1000, "task file") == b"x" * 1000
    with pytest.raises(MergecoreError) as info:
        read_regular_file(path, 999, "task file")
    assert str(info.value) == f"task file {path} is 1000 bytes, over the 999 bytes limit; give a smaller file"
    with open(path, "r+b") as f:
        f.truncate(2**20 + 1)
    with pytest.raises(MergecoreError) as info:
        read_regular_file(path, 2**20, "task file")
    assert str(info.value) == f"task file {path} is 1 MiB, over the 1 MiB limit; give a smaller file"


def test_read_regular_file_missing_or_unreachable_is_one_exact_line(tmp_path):
    from mergecore.files import read_regular_file

    with pytest.raises(MergecoreError) as info:
        read_regular_file(tmp_path / "none.csv", 100, "task file")
    assert str(info.value) == f"task file {tmp_path / 'none.csv'} does not exist; check the folder and file name"
    (tmp_path / "t.csv").write_text("x")
    with pytest.raises(MergecoreError) as info:
        read_regular_file(tmp_path / "t.csv" / "x", 100, "task file")
    assert str(info.value) == (f"cannot read task file {tmp_path / 't.csv' / 'x'} (Not a directory); check the path "
                               "and its permissions")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_read_regular_file_counts_the_bytes_it_reads():
    """/proc files are regular with st_size 0: the size found by reading is what refuses them, and a read error
    (EIO from /proc/self/mem at offset 0) is one line."""
    from mergecore.files import read_regular_file

    with pytest.raises(MergecoreError) as info:
        read_regular_file("/proc/self/status", 100, "probe")
    assert str(info.value) == "probe /proc/self/status is larger than 100 bytes; give a smaller file"
    with pytest.raises(MergecoreError) as info:
        read_regular_file("/proc/self/mem", 100, "probe")
    assert str(info.value) == "cannot read probe /proc/self/mem (Input/output error); check the file"


@deadline(10)
def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    """Opened non-blocking (a FIFO with no writer would block the open) and checked again on the descriptor."""
    from mergecore import files

    (tmp_path / "plain.csv").write_text("x")
    os.mkfifo(tmp_path / "rows.csv")
    monkeypatch.setattr(files, "os", _StatSwapped(tmp_path / "plain.csv"))
    with pytest.raises(MergecoreError) as info:
        files.read_regular_file(tmp_path / "rows.csv", 100, "task file")
    assert str(info.value) == (f"task file {tmp_path / 'rows.csv'} is not a regular file (a device, FIFO or socket); "
                               "give a plain file")


def test_a_file_grown_or_removed_after_the_check_is_refused(tmp_path, monkeypatch):
    from mergecore import files

    (tmp_path / "small.csv").write_text("x")
    (tmp_path / "big.csv").write_bytes(b"x" * 2000)
    monkeypatch.setattr(files, "os", _StatSwapped(tmp_path / "small.csv"))
    with pytest.raises(MergecoreError) as info:
        files.read_regular_file(tmp_path / "big.csv", 1000, "task file")
    assert str(info.value) == (f"task file {tmp_path / 'big.csv'} is 2000 bytes, over the 1000 bytes limit; give a "
                               "smaller file")
    with pytest.raises(MergecoreError) as info:
        files.read_regular_file(tmp_path / "gone.csv", 1000, "task file")
    assert str(info.value) == (f"cannot read task file {tmp_path / 'gone.csv'} (No such file or directory); check "
                               "the path and its permissions")


def test_a_file_that_grows_after_the_checks_is_read_only_to_the_bound(tmp_path, monkeypatch):
    """Both checks saw a small file (``stat`` and ``fstat`` answer for it); the file read is 64 MiB (it grew in
    between): at most ``max_bytes`` + 1 bytes are read before it is refused."""
    from mergecore import files

    (tmp_path / "small.csv").write_text("x")
    with open(tmp_path / "grown.csv", "wb") as f:
        f.truncate(64 * 2**20)
    swapped = _StatSwapped(tmp_path / "small.csv")
    swapped.fstat = lambda fd: os.stat(tmp_path / "small.csv")
    monkeypatch.setattr(files, "os", swapped)
    tracemalloc.start()
    try:
        with pytest.raises(MergecoreError) as info:
            files.read_regular_file(tmp_path / "grown.csv", 1000, "task file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == f"task file {tmp_path / 'grown.csv'} is larger than 1000 bytes; give a smaller file"
    assert peak < 2**20, f"read {peak / 2**20:.0f} MiB of a file limited to 1000 bytes"


def _nested(depth: int, siblings: int) -> str:
    """A list nesting ``depth`` levels after ``siblings`` pairs of empty lists and objects (over 64 brackets in
    all, so the depth is counted, not bounded by the bracket count)."""
    return "[" + "[], {}, " * siblings + "[" * (depth - 1) + "]" * (depth - 1) + "]"


def test_read_json_depth_limit_is_exact_and_inclusive():
    from mergecore.files import MAX_JSON_DEPTH, read_json

    assert MAX_JSON_DEPTH == 64
    assert read_json("[" * 64 + "]" * 64, "x") is not None
    for siblings in (0, 40):
        text = _nested(64, siblings)
        assert read_json(text, "x") == json.loads(text)
        with pytest.raises(MergecoreError) as info:
            read_json(_nested(65, siblings), "the mapping")
        assert str(info.value) == "the mapping nests arrays or objects deeper than 64 levels; flatten it"


def test_read_json_long_flat_documents_and_brackets_in_strings_load():
    """Depth, not the number of brackets: 100 sibling lists or objects, and brackets inside strings (an escaped
    quote does not end one), load; 65 levels of keyed objects do not."""
    from mergecore.files import read_json

    for item in ("[]", "{}", '{"a": [1]}'):
        text = "[" + ", ".join([item] * 100) + "]"
        assert read_json(text, "x") == json.loads(text)
    text = json.dumps({"k": "[" * 100 + '"' + "{" * 100, "l": ["]]]"]})
    assert read_json(text, "x") == json.loads(text)
    with pytest.raises(MergecoreError, match="deeper than 64 levels"):
        read_json('{"a": ' * 65 + "1" + "}" * 65, "x")


def test_json_depth_never_undercounts_a_shallow_text():
    """Below the bound it may answer the bracket count (an upper bound), never less than the real depth."""
    from mergecore.files import MAX_JSON_DEPTH, json_depth

    for text, depth in (("[[[]]]", 3), ('{"a": {"b": {}}}', 3), ('{"a": [1, {"b": []}]}', 4), ("1", 0)):
        assert depth <= json_depth(text) <= MAX_JSON_DEPTH, text


def test_read_json_that_python_cannot_recurse_into_is_one_line():
    """With a depth limit over what ``json.loads`` can recurse (a caller's choice), its RecursionError is one line."""
    from mergecore.files import read_json

    with pytest.raises(MergecoreError) as info:
        read_json("[" * 100_000 + "]" * 100_000, "the mapping", max_depth=10**6)
    assert str(info.value) == "the mapping nests arrays or objects too deeply to read; flatten it"


def test_read_json_with_a_small_limit_counts_depth_not_brackets():
    """The shortcut (bracket count as the depth) only applies below the limit asked for (mutation run, stop 24)."""
    from mergecore.files import read_json

    assert read_json("[[], [], []]", "x", max_depth=2) == [[], [], []]
    with pytest.raises(MergecoreError, match="deeper than 2 levels"):
        read_json("[[[]]]", "x", max_depth=2)
