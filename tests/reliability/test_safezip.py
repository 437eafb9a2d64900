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
