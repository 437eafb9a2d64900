"""Tasks: text inputs, labels, prompt, verbalizers, metric, and disjoint splits.

A ``Task`` is plain data. ``inputs`` are tuples of text fields (one for single sentences, two
for sentence pairs). The *calibration* split is used unlabeled for learning (its labels are
kept only for the supervised-CE objective's small labeled subset); the *evaluation* split is
labeled and disjoint from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from mergecore.errors import MergecoreError

Inputs = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Split:
    inputs: Inputs
    labels: tuple[float, ...] | None = None  # int class ids (as float-safe ints) or regression targets

    def __len__(self) -> int:
        return len(self.inputs)

    def head(self, n: int) -> "Split":
        return Split(self.inputs[:n], None if self.labels is None else self.labels[:n])


@dataclass(frozen=True)
class Task:
    name: str
    label_names: tuple[str, ...]
    calibration: Split
    evaluation: Split
    metric: str = "accuracy"  # accuracy | matthews | pearson_spearman
    prompt: str = "{0}"  # used by seq2seq / causal heads: fields fill {0}, {1}
    verbalizers: tuple[str, ...] = ()  # text of each label for seq2seq / causal heads
    field_names: tuple[str, ...] = ("text",)
    description: str = ""
    label_values: tuple[float, ...] = ()  # regression tasks: numeric value of each (binned) label
    references: tuple[str, ...] = ()  # generative tasks: reference text of each evaluation input (may be empty)

    @property
    def generative(self) -> bool:
        """A generation task (DivMerge App. B.1): learned on the expert's outputs, scored by ROUGE-1."""
        return self.metric == "rouge1"

    def __post_init__(self):
        for split_name, split in (("calibration", self.calibration), ("evaluation", self.evaluation)):
            if len(split) == 0:
                raise MergecoreError(
                    f"task {self.name!r} has an empty {split_name} split; provide at least one example"
                )
        if self.generative:
            if self.references and len(self.references) != len(self.evaluation):
                raise MergecoreError(f"task {self.name!r}: {len(self.references)} references for "
                                     f"{len(self.evaluation)} evaluation inputs; give one reference per input or none")
            return
        if len(self.label_names) < 2:
            raise MergecoreError(f"task {self.name!r} has fewer than 2 labels; give at least two label names")
        if self.evaluation.labels is None:
            raise MergecoreError(f"task {self.name!r}: the evaluation split needs labels")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def class_ids(self, labels) -> torch.Tensor:
        """Class ids (n,) of ``labels``: ids as they are; a regression task's float targets go to the nearest
        bin of ``label_values`` (ties to the lower bin), never truncated."""
        y = torch.as_tensor(labels, dtype=torch.float64).reshape(-1)
        if self.label_values:
            values = torch.as_tensor(self.label_values, dtype=torch.float64)
            return (y[:, None] - values[None, :]).abs().argmin(-1)
        return y.round().long()

    def render(self, fields: tuple[str, ...]) -> str:
        """The prompt text for one input (seq2seq / causal heads)."""
        return self.prompt.format(*fields)

    def fingerprint(self) -> str:
        """Content hash of the task's data (goes into run configs and merge cards)."""
        h = hashlib.sha256()
        payload = [self.name, self.label_names, self.calibration.inputs, self.evaluation.inputs,
                   self.evaluation.labels, self.prompt, self.verbalizers] + ([self.references] if self.references else [])
        h.update(json.dumps(payload, sort_keys=True, default=list).encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class TaskSet:
    tasks: tuple[Task, ...] = field(default_factory=tuple)

    def __post_init__(self):
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise MergecoreError(f"duplicate task names {names}; give each task a unique name")

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def by_name(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise MergecoreError(f"unknown task {name!r}; known tasks: {', '.join(self.names)}")
