"""AdapterSet bookkeeping against the adapters' own files: the compatibility report and subsets."""

from __future__ import annotations

import hashlib
import json

import pytest
from safetensors.torch import load_file

from mergecore.adapters import load_adapters
from mergecore.errors import MergecoreError


def test_report_rows_come_from_each_adapter_folder(tiny_setup):
    _, dirs = tiny_setup
    rows = load_adapters(dirs).report()
    assert [r["adapter"] for r in rows] == [d.name for d in dirs]
    for row, d in zip(rows, dirs):
        config = json.loads((d / "adapter_config.json").read_text())
        sha = hashlib.sha256((d / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert row["ranks"] == [config["r"]] and row["sha256"] == sha[:12] and row["source"] == str(d)
        assert row["target_modules"] == sorted(config["target_modules"]) and row["heads"] == ["classifier"]
        assert row["base_model"] == config["base_model_name_or_path"]
        saved = load_file(d / "adapter_model.safetensors")
        assert row["modules"] == sum(1 for k in saved if k.endswith("lora_A.weight"))


def test_subset_keeps_the_asked_order_and_refuses_unknown_names(tiny_setup):
    _, dirs = tiny_setup
    adapters = load_adapters(dirs)
    sub = adapters.subset([dirs[2].name, dirs[0].name])
    assert sub.names == [dirs[2].name, dirs[0].name]
    assert sub.adapters[0] is adapters.adapters[2] and sub.adapters[1] is adapters.adapters[0]
    with pytest.raises(MergecoreError, match="unknown adapters \\['nope'\\]; known: alpha, beta, gamma"):
        adapters.subset(["nope"])
