"""Files written whole or not at all: atomic folders (a temporary sibling renamed into place), safe names
inside a folder, safetensors with metadata, hashes, zips."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from mergecore.errors import MergecoreError

__version__ = "0.1.0"  # the library version, written into the folder marker and merge cards


def safe_name(name: str) -> str:
    """A file-name-safe form of a task name: letters, digits, '-', '_', '.'; never '.', '..' or hidden."""
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".-")
    return s[:100] or "task"


def inside(folder: Path, rel: str) -> Path:
    """``folder / rel``, refusing any path that escapes ``folder``."""
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise MergecoreError(f"file name {rel!r} escapes the export folder; use plain names")
    return path


MARKER = ".mergecore-folder"  # written into every folder atomic_folder makes: --force may replace only those
STORE_NAME = "runs.sqlite"  # a workspace's run store (runs.store): never inside a folder that is replaced


def check_target(out: Path, overwrite: bool, protect=(), what: str = "export target") -> Path:
    """The resolved target folder, or one line why mergecore may not write there. The one rule for every
    folder mergecore writes: a file is refused; a target that is or holds a protected path (``protect``:
    (label, path) pairs: the workspace, a run's adapters and task files) is refused even with ``overwrite``;
    an empty or missing folder is fine; a non-empty one needs ``overwrite`` and mergecore's ``MARKER`` (a
    folder mergecore wrote), and must hold no run store."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise MergecoreError(f"{what} {out} is a file; choose a folder path")
    for label, path in protect:
        kept = Path(path).expanduser().resolve()
        if kept == out or kept.is_relative_to(out):
            held = f"is {label}" if kept == out else f"holds {label} {kept}"
            raise MergecoreError(f"{what} {out} {held}, which mergecore never replaces "
                                 "(not even with --force); choose another folder")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if (out / STORE_NAME).exists():
        raise MergecoreError(f"{what} {out} is a workspace (it holds {STORE_NAME}), which mergecore never replaces "
                             "(not even with --force); choose another folder")
    if not overwrite:
        raise MergecoreError(f"{what} {out} already exists; choose a new folder or pass --force (overwrite=True)")
    if not (out / MARKER).is_file():
        raise MergecoreError(f"{what} {out} holds files mergecore did not write (it has no {MARKER}), and --force "
                             "replaces only a folder mergecore wrote; choose another folder or remove it yourself")
    store = next(out.rglob(STORE_NAME), None)
    if store is not None:
        raise MergecoreError(f"{what} {out} holds a run store {store}, which mergecore never replaces (not even "
                             "with --force); move it out or choose another folder")
    return out


@contextmanager
def atomic_folder(out: Path, overwrite: bool = False, protect=(), what: str = "export target"):
    """Yield a temporary folder next to ``out`` (holding ``MARKER``); on success it replaces ``out`` by rename,
    on error it vanishes. ``check_target``'s rule is applied before and again at the swap."""
    out = check_target(out, overwrite, protect, what)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        (tmp / MARKER).write_text(f"written by mergecore {__version__}; --force may replace this folder whole\n")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MergecoreError(f"cannot write into {out.parent} ({exc.strerror}); choose a writable folder") from None
    try:
        yield tmp
        _swap(tmp, check_target(out, overwrite, protect, what))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary sibling renamed into place: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _swap(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zip_folder(folder: str | Path) -> bytes:
    """The folder as zip bytes, entries under ``<folder name>/`` (for a download button)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{folder.name}/{p.relative_to(folder).as_posix()}")
    return buf.getvalue()


# ----------------------------------------------------------------------------- bounded reads of untrusted files

MAX_JSON_DEPTH = 64  # adapter configs, task mappings and JSONL rows nest a few levels; json.loads recurses per level
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.S)  # an unterminated string runs to the end: never retried


def read_regular_file(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``; one line otherwise. The type is
    checked before opening (a device such as /dev/zero, a FIFO or a socket is never opened) and again on the
    open descriptor, which is opened non-blocking, and at most ``max_bytes`` + 1 bytes are read."""
    path = Path(path).expanduser()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MergecoreError(f"{what} {path} does not exist; check the folder and file name") from None
    except OSError as exc:
        raise MergecoreError(f"cannot read {what} {path} ({exc.strerror}); check the path and its permissions") from None
    _regular(path, st, max_bytes, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise MergecoreError(f"cannot read {what} {path} ({exc.strerror}); check the path and its permissions") from None
    try:
        _regular(path, os.fstat(fd), max_bytes, what)  # swapped for something else between stat and open
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise MergecoreError(f"cannot read {what} {path} ({exc.strerror}); check the file") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise MergecoreError(f"{what} {path} is larger than {_size(max_bytes)}; give a smaller file")
    return data


def _regular(path: Path, st: os.stat_result, max_bytes: int, what: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise MergecoreError(f"{what} {path} is a folder, not a file; give the path of a file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise MergecoreError(f"{what} {path} is not a regular file (a device, FIFO or socket); give a plain file")
    if st.st_size > max_bytes:
        raise MergecoreError(f"{what} {path} is {_size(st.st_size)}, over the {_size(max_bytes)} limit; "
                             "give a smaller file")


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def json_depth(text: str, enough: int = MAX_JSON_DEPTH) -> int:
    """How deep ``text``'s arrays and objects nest (brackets inside strings not counted); cheap when the text
    holds at most ``enough`` brackets in all (then their count, an upper bound, is returned)."""
    if text.count("[") + text.count("{") <= enough:
        return text.count("[") + text.count("{")  # an upper bound, at most ``enough``: enough to pass
    depth = deepest = 0
    for c in re.sub(r"[^\[\]{}]+", "", _JSON_STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def read_json(text: str, what: str, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads(text)`` refusing nesting deeper than ``max_depth`` in one line (``what`` names the source);
    a malformed text raises ``json.JSONDecodeError`` as ``json.loads`` does, for the caller to word."""
    if json_depth(text, max_depth) > max_depth:
        raise MergecoreError(f"{what} nests arrays or objects deeper than {max_depth} levels; flatten it")
    try:
        return json.loads(text)
    except RecursionError:
        raise MergecoreError(f"{what} nests arrays or objects too deeply to read; flatten it") from None
