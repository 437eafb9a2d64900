"""Unpack an uploaded zip of adapter folders, refusing anything that could escape or explode.

Refused with one line: absolute names, '..' parts, symbolic links and other non-regular entries,
more than ``max_files`` entries, more than ``max_bytes`` uncompressed, a corrupt archive. The
archive is unpacked into a fresh temporary folder beside ``dest`` and renamed into place, so a
refused or broken upload leaves nothing behind.
"""

from __future__ import annotations

import io
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from mergecore.errors import MergecoreError
from mergecore.files import atomic_folder

MAX_BYTES = 512 * 2**20
MAX_FILES = 2000


def _check(info: zipfile.ZipInfo) -> PurePosixPath:
    name = PurePosixPath(info.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
        raise MergecoreError(f"zip entry {info.filename!r} points outside its folder; re-create the zip with relative paths")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise MergecoreError(f"zip entry {info.filename!r} is a link or device; zip plain files only")
    return name


def extract_zip(data: bytes, dest: str | Path, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> list[Path]:
    """Unpack ``data`` into ``dest`` (which must not exist); returns the folders holding adapter_config.json."""
    dest = Path(dest)
    if dest.exists():
        raise MergecoreError(f"{dest} already exists; upload under another name or delete it first")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise MergecoreError(f"the upload is not a valid zip ({exc}); zip the adapter folders again") from None
    if len(infos) > max_files:
        raise MergecoreError(f"the zip holds {len(infos)} entries (limit {max_files}); upload fewer files")
    if sum(i.file_size for i in infos) > max_bytes:
        raise MergecoreError(f"the zip unpacks to more than {max_bytes // 2**20} MiB; upload smaller adapters")
    names = [_check(i) for i in infos]
    try:
        with atomic_folder(dest) as tmp:
            for info, name in zip(infos, names):
                target = tmp.joinpath(*name.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (OSError, zipfile.BadZipFile) as exc:
        raise MergecoreError(f"could not unpack the zip ({exc}); check the archive and free disk space") from None
    return sorted(p.parent for p in dest.rglob("adapter_config.json"))
