"""Uploaded zips: adapter folders unpack; escaping, linked, oversized or corrupt archives are refused."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from mergecore.errors import MergecoreError
from mergecore.safezip import extract_zip


def _zip(entries: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_adapter_folders_unpack(tmp_path):
    data = _zip({"a/adapter_config.json": b"{}", "a/adapter_model.safetensors": b"x", "b/adapter_config.json": b"{}"})
    assert extract_zip(data, tmp_path / "up") == [tmp_path / "up" / "a", tmp_path / "up" / "b"]


@pytest.mark.parametrize("entries,link,words", [
    ({"../evil.txt": b"x"}, None, "outside its folder"),
    ({"/abs/evil.txt": b"x"}, None, "outside its folder"),
    ({"a/../../evil.txt": b"x"}, None, "outside its folder"),
    ({"C:/evil.txt": b"x"}, None, "outside its folder"),
    ({"a/adapter_config.json": b"{}"}, "a/link", "link or device"),
])
def test_escaping_entries_are_refused_and_nothing_is_written(tmp_path, entries, link, words):
    with pytest.raises(MergecoreError, match=words):
        extract_zip(_zip(entries, link), tmp_path / "up")
    assert not (tmp_path / "up").exists() and not (tmp_path / "evil.txt").exists()
    assert list(tmp_path.iterdir()) == []


def test_limits_corrupt_and_existing_target(tmp_path):
    with pytest.raises(MergecoreError, match="more than"):
        extract_zip(_zip({"a.bin": b"0" * 2048}), tmp_path / "up", max_bytes=1024)
    with pytest.raises(MergecoreError, match="entries"):
        extract_zip(_zip({f"f{i}": b"" for i in range(5)}), tmp_path / "up", max_files=3)
    with pytest.raises(MergecoreError, match="not a valid zip"):
        extract_zip(b"PK\x03\x04 truncated", tmp_path / "up")
    (tmp_path / "up").mkdir()
    with pytest.raises(MergecoreError, match="already exists"):
        extract_zip(_zip({"a": b"x"}), tmp_path / "up")


def test_real_adapter_zips_pass_the_ratio_bound(tmp_path):
    """A real LoRA adapter compresses about 1.1x, far under the ratio bound (bombs: tests/reliability/test_bounded.py)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "mergecore" / "demo" / "adapters" / "sentiment"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in folder.iterdir():
            if p.is_file():
                z.writestr(f"sentiment/{p.name}", p.read_bytes())
    assert extract_zip(buf.getvalue(), tmp_path / "up") == [tmp_path / "up" / "sentiment"]


# ----------------------------------------------------------------------------- pinned by mutation testing (issue 25)


def test_backslash_names_are_folders_and_cannot_escape(tmp_path):
    """A zip made on Windows may separate folders with '\\': it unpacks into folders, and '..\\' still escapes."""
    good = _zip({"a\\adapter_config.json": b"{}"})
    assert extract_zip(good, tmp_path / "up") == [tmp_path / "up" / "a"]
    with pytest.raises(MergecoreError, match="outside its folder"):
        extract_zip(_zip({"..\\evil.txt": b"x"}), tmp_path / "up2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up"]


def test_directory_entries_with_their_file_type_unpack(tmp_path):
    """Entries zipped from a real folder carry their file type (S_IFDIR, S_IFREG) in the high 16 bits of
    external_attr, as ``zip -r`` and ``ZipFile.write`` store them."""
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(src, "a")
        z.write(src / "adapter_config.json", "a/adapter_config.json")
    infos = zipfile.ZipFile(io.BytesIO(buf.getvalue())).infolist()
    assert stat.S_ISDIR(infos[0].external_attr >> 16) and stat.S_ISREG(infos[1].external_attr >> 16)
    assert extract_zip(buf.getvalue(), tmp_path / "up") == [tmp_path / "up" / "a"]
    assert (tmp_path / "up" / "a" / "adapter_config.json").read_text() == "{}"


def _patched_first_entry(data: bytes, local_offset: int, central_offset: int, value: bytes) -> bytes:
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        i = out.find(sig)
        out[i + off:i + off + len(value)] = value
    return bytes(out)


def test_encryption_and_method_refusals_are_exact(tmp_path):
    data = _zip({"a/adapter_config.json": b"{}"})
    with pytest.raises(MergecoreError) as info:
        extract_zip(_patched_first_entry(data, 6, 8, (1).to_bytes(2, "little")), tmp_path / "up")
    assert str(info.value) == ("zip entry 'a/adapter_config.json' is encrypted; zip the adapter folders without "
                               "a password")
    with pytest.raises(MergecoreError) as info:
        extract_zip(_patched_first_entry(data, 8, 10, (93).to_bytes(2, "little")), tmp_path / "up")
    assert str(info.value) == ("zip entry 'a/adapter_config.json' uses compression method 93, which cannot be "
                               "unpacked here; zip with stored, deflate, bzip2, lzma (the default is deflate)")
    assert list(tmp_path.iterdir()) == []


def test_limits_are_inclusive(tmp_path):
    """Exactly ``max_files`` entries and exactly ``max_bytes`` unpacked are allowed; one more is refused."""
    assert extract_zip(_zip({f"a/f{i}": b"" for i in range(3)}), tmp_path / "files", max_files=3) == []
    assert len(list((tmp_path / "files" / "a").iterdir())) == 3
    assert extract_zip(_zip({"a/x.bin": b"0" * 1024}), tmp_path / "bytes", max_bytes=1024) == []
    assert (tmp_path / "bytes" / "a" / "x.bin").stat().st_size == 1024


def test_size_refusal_names_the_limit_in_mib(tmp_path):
    with pytest.raises(MergecoreError) as info:
        extract_zip(_zip({"a.bin": bytes(2**21 + 1)}), tmp_path / "up", max_bytes=2**21)
    assert str(info.value) == "the zip unpacks to more than 2 MiB; upload smaller adapters"


def test_zip_unpacking_to_exactly_the_ratio_floor_passes(tmp_path):
    """16 MiB of zeros (about 16 KiB zipped, over 100x) always may unpack: the floor is inclusive and every byte
    written is counted once."""
    from mergecore.safezip import RATIO_FLOOR

    import tracemalloc

    data = _zip_deflated({"a/adapter_model.safetensors": bytes(RATIO_FLOOR)})
    assert 100 * len(data) < RATIO_FLOOR
    tracemalloc.start()
    try:
        assert extract_zip(data, tmp_path / "up") == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < RATIO_FLOOR / 4, f"unpacking held {peak / 2**20:.0f} MiB: entries are streamed in chunks"
    assert (tmp_path / "up" / "a" / "adapter_model.safetensors").stat().st_size == RATIO_FLOOR


def test_ratio_bound_scales_with_the_zip_and_its_message_gives_both_sizes(tmp_path):
    """Over the floor, the bound is ``max_ratio`` times the zip's size: 17 MiB from a few KiB passes with a
    ratio of 10^6 and is refused with the default 100, the message giving both sizes."""
    import random

    data = _zip_deflated({"a/zeros.bin": bytes(17 * 2**20)})
    assert extract_zip(data, tmp_path / "up", max_ratio=1e6) == []
    noise = random.Random(0).randbytes(200 * 2**10)  # incompressible: the zip is about 0.2 MiB
    data = _zip_deflated({"a/noise.bin": noise, "a/zeros.bin": bytes(30 * 2**20)})
    assert 0.15 * 2**20 < len(data) < 0.25 * 2**20
    with pytest.raises(MergecoreError) as info:
        extract_zip(data, tmp_path / "up2")
    assert str(info.value) == ("the zip would unpack to 30 MiB from 0.2 MiB, more than 100 times its size (a zip "
                               "bomb?); zip the adapter files themselves")
    assert not (tmp_path / "up2").exists()


def _zip_deflated(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_folder_that_appears_while_unpacking_is_not_replaced(tmp_path, monkeypatch):
    """``dest`` made by someone else during the unpacking: refused at the swap, naming the upload folder; their
    files stay and nothing else is left."""
    import builtins

    from mergecore import safezip

    dest = tmp_path / "up"

    def racing_open(*args, **kwargs):
        if not dest.exists():
            dest.mkdir()
            (dest / "theirs.txt").write_text("theirs")
        return builtins.open(*args, **kwargs)

    monkeypatch.setattr(safezip, "open", racing_open, raising=False)
    with pytest.raises(MergecoreError) as info:
        extract_zip(_zip({"a/adapter_config.json": b"{}"}), dest)
    assert str(info.value).startswith(f"upload folder {dest.resolve()} already exists; ")
    assert [p.name for p in dest.iterdir()] == ["theirs.txt"] and [p.name for p in tmp_path.iterdir()] == ["up"]


def test_unpacked_passes_its_limits_and_removes_once(tmp_path):
    """``Unpacked`` hands its limits to ``extract_zip``; ``remove()`` after the folder is already gone (a user
    cleared the uploads folder) does not raise, and a second call is a no-op."""
    import shutil

    from mergecore.safezip import Unpacked

    data = _zip({"a/adapter_config.json": b"{}", "b/adapter_config.json": b"{}"})
    with pytest.raises(MergecoreError, match="entries"):
        Unpacked(data, tmp_path / "uploads", max_files=1)
    held = Unpacked(data, tmp_path / "uploads")
    assert held.adapters == [held.folder / "a", held.folder / "b"] and held.folder.parent == tmp_path / "uploads"
    assert not held.removed
    shutil.rmtree(held.folder)
    held.remove()
    assert held.removed
    held.remove()


def test_nested_folders_unpack_in_any_entry_order(tmp_path):
    """A folder entry deeper than any made so far, a file three folders down without folder entries, and a
    folder entry for a folder that already exists: all unpack, and nothing after a folder entry is skipped."""
    data = _zip({"x/y/z/": b"", "x/y/z/adapter_config.json": b"{}", "p/q/r/adapter_config.json": b"{}", "x/": b"",
                 "p/q/": b""})
    assert extract_zip(data, tmp_path / "up") == [tmp_path / "up" / "p" / "q" / "r", tmp_path / "up" / "x" / "y" / "z"]


def test_a_stream_longer_than_declared_is_stopped_at_the_bound(tmp_path, monkeypatch):
    """CPython's zipfile stops every entry at its declared size (a lying size is a CRC error, below); the
    unpacker counts the bytes itself anyway, so a reader that yields more is stopped at the bound."""
    data = _zip({"a/adapter_model.safetensors": b"x"})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(bytes(3 * 2**20 + 1)))
    with pytest.raises(MergecoreError) as info:
        extract_zip(data, tmp_path / "up", max_bytes=3 * 2**20)
    assert str(info.value) == ("the zip unpacks to more than 3 MiB, more than it declares; zip the adapter folders "
                               "again")
    assert list(tmp_path.iterdir()) == []


def test_a_lying_size_or_corrupt_entry_is_one_exact_line(tmp_path):
    data = bytearray(_zip({"a/adapter_config.json": b"y" * 2000}))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # declare 10 bytes for 2000
        i = data.find(sig)
        data[i + off:i + off + 4] = (10).to_bytes(4, "little")
    with pytest.raises(MergecoreError) as info:
        extract_zip(bytes(data), tmp_path / "up")
    assert str(info.value) == ("could not unpack the zip: an entry is corrupt (BadZipFile: Bad CRC-32 for file "
                               "'a/adapter_config.json'); zip the adapter folders again")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_unpacking_is_one_line(tmp_path, monkeypatch):
    from mergecore import safezip

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(args[0]))

    monkeypatch.setattr(safezip, "open", full, raising=False)
    with pytest.raises(MergecoreError) as info:
        extract_zip(_zip({"a/adapter_config.json": b"{}"}), tmp_path / "up")
    assert str(info.value) == ("could not unpack the zip (No space left on device); check the archive and free "
                               "disk space")
    assert list(tmp_path.iterdir()) == []
