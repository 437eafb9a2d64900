"""Readers: how p(y|x) is read off a MergeModel, and how task inputs become batches.

A ``Reader`` encodes a task's inputs once (``encode``) into tensors, builds mixed-task batches
(``batch``: rows grouped per task, padded to the longest row in the batch) and returns each
task's label logits (``label_logits``: list of (n_k, C_k)). The ``ClassifierReader`` here is the
encoder + each task's own head (PEFT ``modules_to_save``); the seq2seq / causal readers in
``verbalizer.py`` score verbalizers instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from mergecore.data.tasks import Inputs
from mergecore.forward.model import MergeModel, Segments


@dataclass(frozen=True)
class Encoded:
    """One task split, tokenized once: tensors (n, T), padded to the split's longest input."""

    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.tensors.items()}


class Reader(Protocol):
    """What the workbench, the learner, evaluation and the lenses need from a model family."""

    family: str  # "classifier" | "seq2seq" | "causal"
    tokenizer: object

    def encode(self, inputs: Inputs) -> Encoded: ...

    def batch(self, parts: list[tuple[int, Encoded, torch.Tensor]], device=None) -> tuple[Segments, dict]: ...

    def label_logits(self, mm: MergeModel, segments: Segments, inputs: dict) -> list[torch.Tensor]: ...


def _pad_cat(parts: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate row blocks, trimming/padding to the longest real length among them."""
    length = max(int(p["attention_mask"].sum(1).max()) for p in parts)
    out = {}
    for key in parts[0]:
        fill = pad_id if key == "input_ids" else 0
        cols = []
        for p in parts:
            t = p[key][:, :length]
            if t.shape[1] < length:
                t = torch.nn.functional.pad(t, (0, length - t.shape[1]), value=fill)
            cols.append(t)
        out[key] = torch.cat(cols, 0)
    return out


class ClassifierReader:
    """Encoder + per-task classification head; label distribution = softmax over the task's labels."""

    family = "classifier"

    def __init__(self, tokenizer, max_length: int = 128):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, inputs: Inputs) -> Encoded:
        fields = list(zip(*inputs))  # one list per text field
        enc = self.tokenizer(*[list(f) for f in fields[:2]], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return Encoded({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})

    def batch(self, parts: list[tuple[int, Encoded, torch.Tensor]], device=None):
        """parts: (task index, encoded split, row indices) in task order -> (Segments, model inputs)."""
        spans, start = [], 0
        for task, _, idx in parts:
            spans.append((task, start, start + len(idx)))
            start += len(idx)
        inputs = _pad_cat([enc.rows(idx) for _, enc, idx in parts], self.tokenizer.pad_token_id or 0)
        return Segments(spans), {k: v.to(device) for k, v in inputs.items()}

    def label_logits(self, mm: MergeModel, segments: Segments, inputs: dict) -> list[torch.Tensor]:
        logits = mm(segments, **inputs).logits  # (N, C_max), padded per task
        return [logits[s:e, : mm.num_labels[t]].float() for t, s, e in segments.spans]
