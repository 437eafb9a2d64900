"""Full merged weights: a fresh base model of the bench's family with the merged delta added to its weights."""

from __future__ import annotations

from pathlib import Path

import torch

from mergecore.bases import load_base
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportInputs
from mergecore.forward.workbench import Workbench
from mergecore.merged import Merge


def bench_family(bench: Workbench | ExportInputs) -> str:
    """The bench's model family: 'seq2seq', 'causal', or else 'classifier' (``ExportInputs.family``, ``Workbench.family``)."""
    family = getattr(bench, "family", None)
    return family if family in ("seq2seq", "causal") else "classifier"


def base_folder(bench: Workbench) -> str | None:
    """The local folder the bench's base model was read from (``--base-path`` included), when there is one."""
    config = getattr(getattr(bench.model, "model", None), "config", None)
    path = getattr(config, "_name_or_path", None)
    return str(path) if path and Path(path).is_dir() else None


def full_model(bench: Workbench, merge: Merge, head_task: str, head: dict[str, torch.Tensor]):
    """A fresh base model of the bench's family (the base's own class: classifier with ``head_task``'s
    head, seq2seq LM or causal LM with its lm_head) with the merged delta added to its weights."""
    family = bench_family(bench)
    task = bench.tasks.by_name(head_task)
    model, tokenizer, _ = load_base(base_name(bench), family, base_path=base_folder(bench),
                                    num_labels=task.num_labels)  # the head's size (LMs ignore it)
    if family == "classifier":
        missing = [k for k in model.load_state_dict(head, strict=False).unexpected_keys]
        if missing:
            raise MergecoreError(f"head tensors {missing} do not exist in the base model; check the base model")
    with torch.no_grad():
        for name, m in merge.items():
            layer = model.get_submodule(name)
            delta = m.delta() if isinstance(layer, torch.nn.Linear) else m.delta().T  # GPT-2 Conv1D: (in, out)
            layer.weight += delta.to(layer.weight.dtype).to(layer.weight.device)
    if family == "classifier":
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {n: i for i, n in enumerate(task.label_names)}
    return model, tokenizer


def base_name(bench: Workbench) -> str:
    return bench.base_name or bench.adapters.base_model
