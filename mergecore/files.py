"""Files written whole or not at all: atomic folders (a temporary sibling renamed into place), safe names
inside a folder, safetensors with metadata, hashes, zips."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from mergecore.errors import MergecoreError


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


def check_target(out: Path, overwrite: bool) -> Path:
    """The resolved target; refuses a file, or an existing folder without ``overwrite``."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise MergecoreError(f"export target {out} is a file; choose a folder path")
    if out.exists() and not overwrite:
        raise MergecoreError(f"export target {out} already exists; choose a new folder or pass --force (overwrite=True)")
    return out


@contextmanager
def atomic_folder(out: Path, overwrite: bool = False):
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` by rename, on error it vanishes."""
    out = check_target(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise MergecoreError(f"cannot write into {out.parent} ({exc.strerror}); choose a writable folder") from None
    try:
        yield tmp
        _swap(tmp, check_target(out, overwrite))
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
