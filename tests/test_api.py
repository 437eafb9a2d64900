"""The public API at the package top, and the README's example run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mergecore

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_exists():
    assert mergecore.__all__ and all(hasattr(mergecore, name) for name in mergecore.__all__)


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    from peft import PeftConfig

    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    result, store = scope["result"], scope["store"]
    assert result["status"] == "done" and set(result["scores"]) == set(scope["bench"].tasks.names)
    assert {r.id for r in store.list()} >= {scope["run_id"], scope["ties_id"]}
    assert scope["spectra"]["modules"] == scope["bench"].adapters.modules
    assert PeftConfig.from_pretrained(str(tmp_path / "merged-adapter")).peft_type == "LORA"
