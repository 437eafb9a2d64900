"""Unpack an uploaded zip of adapter folders, refusing anything that could escape or explode.

Refused with one line: absolute names, '..' parts, symbolic links and other non-regular entries,
more than ``max_files`` entries, more than ``max_bytes`` uncompressed, more than ``max_ratio`` times the
zip's own size uncompressed (a zip bomb; LoRA factors compress about 1.1x, so real adapters are far
below), encrypted entries, compression methods zipfile cannot unpack, and a corrupt archive or stream.
The bytes actually unpacked are counted against the bound as they are written (the sizes a zip
declares can lie). The archive is unpacked into a fresh temporary folder beside ``dest`` and renamed
into place, so a refused or broken upload leaves nothing behind.
"""

from __future__ import annotations

import io
import lzma
import shutil
import stat
import uuid
import weakref
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from mergecore.errors import MergecoreError
from mergecore.files import atomic_folder

MAX_BYTES = 512 * 2**20
MAX_FILES = 2000
MAX_RATIO = 100  # unpacked / zip size; a fresh adapter (lora_B all zeros) is about 2x
RATIO_FLOOR = 16 * 2**20  # up to this much may always unpack (small zips of JSON compress 10x and more)
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
           zipfile.ZIP_LZMA: "lzma"}
CHUNK = 2**20
# what a corrupt stream raises while it is read: zlib.error (deflate), EOFError (truncated), OSError / ValueError
# (bzip2), lzma.LZMAError, zipfile.BadZipFile (CRC), RuntimeError / NotImplementedError (encryption, methods)
STREAM_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, RuntimeError, NotImplementedError,
                 ValueError)


def _check(info: zipfile.ZipInfo) -> PurePosixPath:
    name = PurePosixPath(info.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
        raise MergecoreError(f"zip entry {info.filename!r} points outside its folder; re-create the zip with relative paths")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise MergecoreError(f"zip entry {info.filename!r} is a link or device; zip plain files only")
    if info.flag_bits & 0x1:
        raise MergecoreError(f"zip entry {info.filename!r} is encrypted; zip the adapter folders without a password")
    if info.compress_type not in METHODS:
        raise MergecoreError(f"zip entry {info.filename!r} uses compression method {info.compress_type}, which "
                             f"cannot be unpacked here; zip with {', '.join(METHODS.values())} (the default is deflate)")
    return name


def extract_zip(data: bytes, dest: str | Path, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES,
                max_ratio: float = MAX_RATIO) -> list[Path]:
    """Unpack ``data`` into ``dest`` (which must not exist); returns the folders holding adapter_config.json."""
    dest = Path(dest)
    if dest.exists():
        raise MergecoreError(f"{dest} already exists; upload under another name or delete it first")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, *STREAM_ERRORS) as exc:
        raise MergecoreError(f"the upload is not a valid zip ({exc}); zip the adapter folders again") from None
    if len(infos) > max_files:
        raise MergecoreError(f"the zip holds {len(infos)} entries (limit {max_files}); upload fewer files")
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise MergecoreError(f"the zip unpacks to more than {max_bytes // 2**20} MiB; upload smaller adapters")
    budget = min(max_bytes, max(RATIO_FLOOR, int(max_ratio * len(data))))
    if declared > budget:
        raise MergecoreError(f"the zip would unpack to {declared / 2**20:.0f} MiB from {len(data) / 2**20:.1f} MiB, "
                             f"more than {max_ratio:g} times its size (a zip bomb?); zip the adapter files themselves")
    names = [_check(i) for i in infos]
    try:
        with atomic_folder(dest, what="upload folder") as tmp:
            written = 0
            for info, name in zip(infos, names):
                target = tmp.joinpath(*name.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > budget:  # the declared sizes were wrong
                            raise MergecoreError(f"the zip unpacks to more than {budget / 2**20:.0f} MiB, more than "
                                                 "it declares; zip the adapter folders again")
                        out.write(chunk)
    except MergecoreError:
        raise
    except OSError as exc:
        raise MergecoreError(f"could not unpack the zip ({exc.strerror or exc}); check the archive and free disk "
                             "space") from None
    except STREAM_ERRORS as exc:
        raise MergecoreError(f"could not unpack the zip: an entry is corrupt ({type(exc).__name__}: {exc}); "
                             "zip the adapter folders again") from None
    return sorted(p.parent for p in dest.rglob("adapter_config.json"))


class Unpacked:
    """``extract_zip`` into a fresh folder under ``root``, removed by ``remove()``, when this object is garbage
    collected (e.g. with the app session whose state holds it) or at interpreter exit, whichever comes first."""

    def __init__(self, data: bytes, root: str | Path, **limits):
        self.folder = Path(root) / uuid.uuid4().hex
        self.adapters = extract_zip(data, self.folder, **limits)  # refused: nothing written, nothing to remove
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def remove(self) -> None:
        self._remove()

    @property
    def removed(self) -> bool:
        return not self._remove.alive
