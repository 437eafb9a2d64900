"""The commands a user runs, against PEFT: `merge --method task_arithmetic --weights` then `export`,
loaded by plain PEFT on the task class and the bare encoder, equals PEFT's weighted merged deltas."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import make_adapter, texts, tiny_bert_base

WEIGHTS = [0.7, -0.4]


def _merged(model) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: v.double() for k, v in model.merge_and_unload().state_dict().items()}


def _tasks(root, n_labels: list[int]):
    specs = []
    for k, n in enumerate(n_labels):
        f = root / f"t{k}.csv"
        f.write_text("text,label\n" + "".join(f"{t},{i % n}\n" for i, t in enumerate(texts(8, seed=k))))
        specs.append({"train": str(f), "eval": str(f), "text": ["text"], "label": "label",
                      "labels": [f"l{i}" for i in range(n)]})
    (root / "tasks.json").write_text(json.dumps(specs))
    return root / "tasks.json"


def _run(args, capsys) -> str:
    from mergecore.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out.err
    return out.out


def test_cli_merge_then_export_equals_peft(tmp_path, capsys):
    from peft import PeftModel
    from transformers import BertForSequenceClassification, BertModel

    base = tiny_bert_base(tmp_path / "base")
    dirs = [make_adapter(base, tmp_path / "a0", 2, 2, ["query", "value"], seed=1, alpha=5),
            make_adapter(base, tmp_path / "a1", 3, 4, ["query", "value", "dense"], seed=2, rslora=True)]
    src = ["--adapters", *map(str, dirs), "--task-files", str(_tasks(tmp_path, [2, 3])),
           "--workspace", str(tmp_path / "ws"), "--device", "cpu"]
    _run(["merge", *src, "--method", "task_arithmetic", "--weights", *map(str, WEIGHTS),
          "--out", str(tmp_path / "run")], capsys)
    _run(["export", *src, "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exp")], capsys)
    w0 = {k: v.double() for k, v in BertForSequenceClassification.from_pretrained(base).state_dict().items()}
    experts = [_merged(PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(
        base, num_labels=n, ignore_mismatched_sizes=True), str(d))) for n, d in zip((2, 3), dirs)]
    ref = {k: w0[k] + sum(w * (e[k] - w0[k]) for w, e in zip(WEIGHTS, experts))
           for k in w0 if k.startswith("bert.")}
    scale = max(float((ref[k] - w0[k]).abs().max()) for k in ref)
    task = _merged(PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base), str(tmp_path / "exp")))
    bare = _merged(PeftModel.from_pretrained(BertModel.from_pretrained(base), str(tmp_path / "exp")))
    assert max(float((task[k] - ref[k]).abs().max()) for k in ref) / scale <= 1e-5
    assert max(float((bare[k[5:]] - ref[k]).abs().max()) for k in ref) / scale <= 1e-5
    assert torch.equal(task["classifier.weight"], experts[0]["classifier.weight"])  # the first task's head
