"""Verbalizer readers: p(y|x) of seq2seq (T5) and decoder-only LMs by scoring label words.

Each label c of task k has a verbalizer text v_c. Its score is the teacher-forced sequence
log-probability of v_c's tokens given the task's prompt, summed over tokens; the label
distribution is the softmax of these scores over the task's label set (SourceJS Eq. 5).
``label_logits`` returns the summed log-probabilities; the Workbench / Learner softmax them.

* ``Seq2SeqReader`` (T5, Flan-T5): the encoder runs once per example; the decoder runs on the
  (n * C) label sequences [decoder_start_token_id] + v_c[:-1] (the model's own start id, never a
  hard-coded one) with v_c's tokens (EOS included by default) as targets. Two forwards.
* ``CausalReader`` (Llama, Qwen, GPT-2, BLOOM): prompt + sep + v_c is tokenized jointly and the
  label tokens are those after the prompt's longest common token prefix, so tokenizers that
  merge the prompt's trailing space into the label token are handled. Sequences are left-padded
  with explicit position ids, so the label tokens sit in the last columns for every row and only
  those columns' logits are computed (``logits_to_keep``). One forward on (n * C) rows.

Rows of the scoring forward are routed by an expanded ``Segments`` (task k covers n_k * C_k
rows), so per-row expert routing and any coefficient source work unchanged. ``batch`` also
returns example-level model inputs (n rows) so ``mm(segments, **inputs)`` stays a valid forward
(feature collection); the label layout travels in ``ScoreSegments``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutput

from mergecore.data.tasks import Inputs, Task, TaskSet
from mergecore.errors import MergecoreError
from mergecore.forward.model import MergeModel, Segments
from mergecore.forward.readers import Encoded


@dataclass(frozen=True)
class PromptEncoded(Encoded):
    """A split's raw inputs; tokenization happens per task in ``batch`` (cached per text)."""

    inputs: Inputs = ()


@dataclass
class ScoreSegments(Segments):
    """Example-level spans plus the layout of the (n * C) label-scoring rows."""

    rows: Segments | None = None  # spans over the expanded label rows
    expand: torch.Tensor | None = None  # (M,) example row of each label row
    seq: dict = field(default_factory=dict)  # model inputs of the scoring forward
    targets: torch.Tensor | None = None  # (M, Lmax) label token ids, -100 where not scored
    num_labels: list[int] = field(default_factory=list)  # C_k per span


def pad(seqs: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of int64 sequences padded to the longest on ``side``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = torch.tensor(s, dtype=torch.long), 1
    return ids, mask


def sequence_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log softmax(logits)[target]; targets -100 are skipped. (M, L, V) -> (M,).

    logit[target] - logsumexp(logits): no second (M, L, V) tensor for the log-softmax.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    return torch.where(targets >= 0, picked, torch.zeros_like(picked)).sum(-1)


def clip_segments(segments: Segments, start: int, end: int) -> Segments:
    """The spans of rows [start, end), shifted to start at 0 (a chunk of a routed batch)."""
    spans = [(t, max(s, start) - start, min(e, end) - start) for t, s, e in segments.spans if s < end and e > start]
    return Segments(spans)


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, total)) for a in range(0, total, max(1, size))]


def split_scores(scores: torch.Tensor, segments: ScoreSegments) -> list[torch.Tensor]:
    """(M,) label-row scores -> per task (n_k, C_k), in span order."""
    out, start = [], 0
    for (_, s, e), c in zip(segments.spans, segments.num_labels):
        out.append(scores[start:start + (e - s) * c].view(e - s, c))
        start += (e - s) * c
    return out


def accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


class VerbalizerReader:
    """Shared plumbing: tasks, tokenizer, token caches, expanded segments."""

    family = "verbalizer"

    def __init__(self, tasks: TaskSet, tokenizer, max_length: int = 256, max_label_rows: int = 1024):
        self.tasks, self.tokenizer, self.max_length = tasks, tokenizer, max_length
        self.max_label_rows = max_label_rows  # (example, label) rows per scoring forward: bounds logits memory
        for t in tasks:
            if len(t.verbalizers) != t.num_labels:
                raise MergecoreError(
                    f"task {t.name!r} has {t.num_labels} labels but {len(t.verbalizers)} verbalizers; "
                    "give one verbalizer text per label"
                )
        self._cache: dict = {}
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

    def encode(self, inputs: Inputs, task: int | None = None) -> PromptEncoded:
        return PromptEncoded({"row": torch.arange(len(inputs))}, tuple(inputs))

    def _ids(self, text: str, special: bool = True) -> list[int]:
        key = (text, special)
        if key not in self._cache:
            self._cache[key] = list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        return self._cache[key]

    def _texts(self, parts) -> list[tuple[Task, list[str]]]:
        return [(self.tasks[k], [self.tasks[k].render(enc.inputs[i]) for i in idx.tolist()]) for k, enc, idx in parts]

    @staticmethod
    def _segments(parts, num_labels: list[int]) -> tuple[list, list]:
        spans, rows, start, rstart = [], [], 0, 0
        for (k, _, idx), c in zip(parts, num_labels):
            spans.append((k, start, start + len(idx)))
            rows.append((k, rstart, rstart + len(idx) * c))
            start, rstart = start + len(idx), rstart + len(idx) * c
        return spans, rows


class Seq2SeqReader(VerbalizerReader):
    """Encoder-decoder (T5): encoder once, decoder on every (example, label) pair."""

    family = "seq2seq"

    def __init__(self, tasks: TaskSet, tokenizer, decoder_start_token_id: int, max_length: int = 256,
                 eos: bool = True, max_label_rows: int = 1024):
        super().__init__(tasks, tokenizer, max_length, max_label_rows)
        if decoder_start_token_id is None:
            raise MergecoreError("the seq2seq base has no decoder_start_token_id in its config; set it in config.json")
        self.start_id, self.eos = int(decoder_start_token_id), eos

    def label_ids(self, task: Task) -> list[list[int]]:
        """Target tokens of each verbalizer (with the tokenizer's EOS when ``eos``)."""
        out = [self._ids(v, special=self.eos) for v in task.verbalizers]
        if any(not ids for ids in out):
            raise MergecoreError(f"task {task.name!r} has an empty verbalizer; give every label a non-empty text")
        return out

    def batch(self, parts, device=None):
        texts = self._texts(parts)
        prompts = [self._ids(t)[: self.max_length] for _, ts in texts for t in ts]
        ids, mask = pad(prompts, self.pad_id)
        dec_in, targets, expand, row = [], [], [], 0
        for task, ts in texts:
            labels = self.label_ids(task)
            for _ in ts:
                for lab in labels:
                    dec_in.append([self.start_id] + lab[:-1])
                    targets.append(lab)
                    expand.append(row)
                row += 1
        dec_ids, dec_mask = pad(dec_in, self.pad_id)
        tgt, _ = pad(targets, -100)
        spans, rows = self._segments(parts, [t.num_labels for t, _ in texts])
        seg = ScoreSegments(spans, rows=Segments(rows), expand=torch.tensor(expand).to(device),
                            seq={"decoder_input_ids": dec_ids.to(device), "decoder_attention_mask": dec_mask.to(device)},
                            targets=tgt.to(device), num_labels=[t.num_labels for t, _ in texts])
        start = torch.full((len(prompts), 1), self.start_id, dtype=torch.long)
        return seg, {"input_ids": ids.to(device), "attention_mask": mask.to(device), "decoder_input_ids": start.to(device)}

    def label_logits(self, mm: MergeModel, segments: ScoreSegments, inputs: dict) -> list[torch.Tensor]:
        mm.slot.segments = segments
        hidden = mm.model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])[0]
        scores = []
        for a, b in chunks(len(segments.expand), self.max_label_rows):
            rows = segments.expand[a:b]
            out = mm(clip_segments(segments.rows, a, b), encoder_outputs=BaseModelOutput(last_hidden_state=hidden[rows]),
                     attention_mask=inputs["attention_mask"][rows], **{k: v[a:b] for k, v in segments.seq.items()})
            scores.append(sequence_scores(out.logits, segments.targets[a:b]))
        return split_scores(torch.cat(scores), segments)


class CausalReader(VerbalizerReader):
    """Decoder-only LM: score prompt + sep + verbalizer, label tokens after the prompt's token prefix."""

    family = "causal"

    def __init__(self, tasks: TaskSet, tokenizer, max_length: int = 256, sep: str = " ", max_label_rows: int = 1024):
        super().__init__(tasks, tokenizer, max_length, max_label_rows)
        self.sep = sep
        self.lead_id = next((i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None), None)

    def split(self, prompt: str, verbalizer: str) -> tuple[list[int], list[int]]:
        """(prefix ids, label ids) of prompt + sep + verbalizer tokenized jointly."""
        head = prompt + self.sep
        full, pre = self._ids(head + verbalizer), self._ids(head)
        p = 0
        while p < min(len(full), len(pre)) and full[p] == pre[p]:
            p += 1
        prefix, label = full[:p], full[p:]
        if not label:
            raise MergecoreError(f"verbalizer {verbalizer!r} adds no token after the prompt; use a non-empty label text")
        if not prefix:  # no BOS and the first token merged: condition on BOS/EOS
            if self.lead_id is None:
                raise MergecoreError("the tokenizer has no BOS or EOS token to start an empty prompt; use a non-empty prompt")
            prefix = [self.lead_id]
        keep = max(1, self.max_length - len(label))
        return prefix[-keep:], label

    def batch(self, parts, device=None):
        texts = self._texts(parts)
        prompts = [self._ids(t)[-self.max_length:] for _, ts in texts for t in ts]
        ids, mask = pad(prompts, self.pad_id, side="right")
        seqs, labels, expand, row = [], [], [], 0
        for task, ts in texts:
            for t in ts:
                for v in task.verbalizers:
                    prefix, label = self.split(t, v)
                    seqs.append(prefix + label)
                    labels.append(label)
                    expand.append(row)
                row += 1
        sids, smask = pad(seqs, self.pad_id, side="left")
        width = max(len(lab) for lab in labels)
        tgt = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, lab in enumerate(labels):
            tgt[i, width - len(lab):] = torch.tensor(lab)
        spans, rows = self._segments(parts, [t.num_labels for t, _ in texts])
        seq = {"input_ids": sids, "attention_mask": smask, "position_ids": (smask.cumsum(-1) - 1).clamp_min(0)}
        seg = ScoreSegments(spans, rows=Segments(rows), expand=torch.tensor(expand).to(device),
                            seq={k: v.to(device) for k, v in seq.items()}, targets=tgt.to(device),
                            num_labels=[t.num_labels for t, _ in texts])
        return seg, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def label_logits(self, mm: MergeModel, segments: ScoreSegments, inputs: dict) -> list[torch.Tensor]:
        width = segments.targets.shape[1]
        kw = dict(segments.seq)
        if not accepts(mm.model, "position_ids"):  # ALiBi models (BLOOM) read positions off the mask
            kw.pop("position_ids")
        if accepts(mm.model, "logits_to_keep"):
            kw["logits_to_keep"] = width + 1
        scores = []
        for a, b in chunks(len(segments.expand), self.max_label_rows):
            part = {k: v[a:b] if torch.is_tensor(v) else v for k, v in kw.items()}
            logits = mm(clip_segments(segments.rows, a, b), **part).logits[:, -(width + 1):-1]
            scores.append(sequence_scores(logits, segments.targets[a:b]))
        return split_scores(torch.cat(scores), segments)


def make_reader(family: str, tasks: TaskSet, tokenizer, config=None, **kw):
    """The reader of a model family: 'seq2seq' | 'causal' (classifier readers live in heads.py)."""
    if family == "seq2seq":
        start = getattr(config, "decoder_start_token_id", None)
        return Seq2SeqReader(tasks, tokenizer, start, **kw)
    if family == "causal":
        return CausalReader(tasks, tokenizer, **kw)
    raise MergecoreError(f"no verbalizer reader for family {family!r}; valid: seq2seq, causal")
