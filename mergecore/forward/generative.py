"""Generative tasks (DivMerge App. B.1): token-level divergence on the expert's own outputs.

For each calibration prompt x of task k, expert k decodes greedily (at most ``max_new_tokens``,
stopping at EOS); its per-token distributions on that output are cached once, truncated to the
top-k tokens with the remaining mass kept as one bucket (memory O(n T k), not O(n T V)). The
merged model is then teacher-forced on the same output and compared token by token on the same
(k + 1) buckets; the per-token divergence is averaged over the sequence's tokens:

    D(x) = 1/|y| sum_t D( p_expert(. | x, y_<t) || q_merged(. | x, y_<t) )   (bucketed)

Both families share one layout: seq2seq feeds [decoder_start] + y[:-1] to the decoder; causal
LMs run prompt + y left-padded so every row's y ends in the last column (only those columns'
logits are computed). Evaluation: the merged model decodes greedily and ROUGE-1 F1 (lower-cased,
whitespace tokens) is taken against reference texts when the data has them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from mergecore.divergences import js_div, kl_div
from mergecore.errors import MergecoreError
from mergecore.forward.coefs import RowRouting
from mergecore.forward.model import MergeModel, Segments
from mergecore.forward.verbalizer import accepts, pad

DIVERGENCES = {"js": js_div, "kl": kl_div}


@dataclass(frozen=True)
class GenParams:
    """Generation and caching; defaults keep memory bounded on long outputs."""

    max_new_tokens: int = field(default=32, metadata={"help": "longest expert output (tokens)"})
    top_k: int = field(default=16, metadata={"help": "expert probabilities kept per token; the rest is one bucket"})
    divergence: str = field(default="js", metadata={"help": "token-level divergence", "choices": tuple(DIVERGENCES)})


@dataclass
class ExpertOutputs:
    """One task's cached expert outputs: prompt ids, greedy outputs, top-k distributions."""

    prompts: list[list[int]]
    outputs: list[list[int]]
    top_ids: torch.Tensor  # (n, Y, k) long, in Generator.forced's alignment
    top_p: torch.Tensor  # (n, Y, k) float32
    mask: torch.Tensor  # (n, Y) bool: real output tokens

    def __len__(self) -> int:
        return len(self.prompts)


class Generator:
    """Teacher-forced logits and greedy decoding of a MergeModel (seq2seq or causal)."""

    def __init__(self, mm: MergeModel, family: str, tokenizer, max_length: int = 256):
        if family not in ("seq2seq", "causal"):
            raise MergecoreError(f"generative tasks need a seq2seq or causal base, not {family!r}")
        self.mm, self.family, self.tokenizer, self.max_length = mm, family, tokenizer, max_length
        cfg = mm.model.config
        self.start_id = getattr(cfg, "decoder_start_token_id", None)
        if family == "seq2seq" and self.start_id is None:
            raise MergecoreError("the seq2seq base has no decoder_start_token_id in its config; set it in config.json")
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else cfg.eos_token_id
        self.pad_id = next((i for i in (tokenizer.pad_token_id, self.eos_id) if i is not None), 0)

    def encode(self, prompts: list[str]) -> list[list[int]]:
        ids = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        return [i[: self.max_length] if self.family == "seq2seq" else i[-self.max_length:] for i in ids]

    def forced(self, task: int, prompts: list[list[int]], outputs: list[list[int]]):
        """(logits (n, Y, V), mask (n, Y), targets (n, Y)): position t predicts targets[:, t]."""
        dev, n = self.mm.device, len(prompts)
        width = max(len(o) for o in outputs)
        segments = Segments([(task, 0, n)])
        if self.family == "seq2seq":
            ids, mask = pad(prompts, self.pad_id)
            dec, dmask = pad([[self.start_id] + o[:-1] for o in outputs], self.pad_id)
            tgt, _ = pad(outputs, self.pad_id)
            logits = self.mm(segments, input_ids=ids.to(dev), attention_mask=mask.to(dev),
                             decoder_input_ids=dec.to(dev), decoder_attention_mask=dmask.to(dev)).logits
            keep = torch.arange(width).unsqueeze(0) < torch.tensor([len(o) for o in outputs]).unsqueeze(1)
            return logits, keep.to(dev), tgt.to(dev)
        ids, mask = pad([p + o for p, o in zip(prompts, outputs)], self.pad_id, side="left")
        kw = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}
        if accepts(self.mm.model, "position_ids"):
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(dev)
        if accepts(self.mm.model, "logits_to_keep"):
            kw["logits_to_keep"] = width + 1
        logits = self.mm(segments, **kw).logits[:, -(width + 1):-1]
        tgt, keep = pad(outputs, self.pad_id, side="left")
        return logits, keep.bool().to(dev), tgt.to(dev)

    @torch.no_grad()
    def greedy(self, task: int, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy outputs (EOS included when produced) under the MergeModel's current source."""
        outs: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        for _ in range(max_new_tokens):
            if not live:
                break
            # a placeholder token: the logits at its position are the next-token distribution
            logits, keep, _ = self.forced(task, [prompts[i] for i in live], [outs[i] + [self.pad_id] for i in live])
            last = (torch.tensor([len(outs[i]) for i in live]) if self.family == "seq2seq"
                    else torch.full((len(live),), logits.shape[1] - 1))
            nxt = logits[torch.arange(len(live)), last.to(logits.device)].argmax(-1).tolist()
            for i, t in zip(live, nxt):
                outs[i].append(int(t))
            live = [i for i in live if outs[i][-1] != self.eos_id]
        return [o if o else [self.eos_id] for o in outs]

    @torch.no_grad()
    def expert_outputs(self, task: int, prompts: list[str], params: GenParams) -> ExpertOutputs:
        """Expert ``task`` decodes its task's prompts (rows routed to it) and its top-k distributions are cached."""
        self.mm.set_source(RowRouting(self.mm.slot, self.mm.num_tasks))
        ids = self.encode(prompts)
        outputs = self.greedy(task, ids, params.max_new_tokens)
        logits, keep, _ = self.forced(task, ids, outputs)
        probs = torch.softmax(logits.float(), -1)
        top = probs.topk(min(params.top_k, probs.shape[-1]), -1)
        return ExpertOutputs(ids, outputs, top.indices.cpu(), top.values.cpu(), keep.cpu())

    def divergence(self, task: int, cache: ExpertOutputs, idx: torch.Tensor, params: GenParams) -> torch.Tensor:
        """Per-sequence mean token divergence (n,) of the current source vs the cached expert."""
        rows = idx.tolist()
        logits, keep, _ = self.forced(task, [cache.prompts[i] for i in rows], [cache.outputs[i] for i in rows])
        width = logits.shape[1]
        # seq2seq rows are left-aligned, causal rows right-aligned to the cache's width
        cols = slice(0, width) if self.family == "seq2seq" else slice(cache.mask.shape[1] - width, None)
        top_ids, top_p, mask = cache.top_ids[idx][:, cols], cache.top_p[idx][:, cols], cache.mask[idx][:, cols]
        dev = logits.device
        return bucket_divergence(logits, top_ids.to(dev), top_p.to(dev), mask.to(dev), params.divergence)


def buckets(p_top: torch.Tensor) -> torch.Tensor:
    """(..., k) top-k probabilities -> (..., k + 1) with the remaining mass as the last bucket."""
    return torch.cat([p_top, (1.0 - p_top.sum(-1, keepdim=True)).clamp_min(0.0)], -1)


def bucket_divergence(logits: torch.Tensor, top_ids: torch.Tensor, top_p: torch.Tensor, mask: torch.Tensor,
                      divergence: str = "js") -> torch.Tensor:
    """Mean over each row's real tokens of D(p || q) on the expert's top-k + rest buckets. -> (n,)"""
    if divergence not in DIVERGENCES:
        raise MergecoreError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    q = torch.softmax(logits.float(), -1).gather(-1, top_ids)
    logq = buckets(q).clamp_min(1e-12).log()
    per_token = DIVERGENCES[divergence](buckets(top_p.float()), logq)  # (n, Y)
    m = mask.float()
    return (per_token * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def rouge1_f1(prediction: str, reference: str) -> float:
    """ROUGE-1 F1 on lower-cased whitespace tokens (clipped unigram overlap)."""
    p, r = Counter(prediction.lower().split()), Counter(reference.lower().split())
    overlap = sum((p & r).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def rouge1(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-1 F1 in percent."""
    if len(predictions) != len(references):
        raise MergecoreError(f"{len(predictions)} predictions but {len(references)} references; give one reference each")
    if not predictions:
        return 0.0
    return 100.0 * sum(rouge1_f1(p, r) for p, r in zip(predictions, references)) / len(predictions)


def generate_texts(gen: Generator, task: int, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy texts of the MergeModel under its current source (for ROUGE-1 evaluation)."""
    outs = gen.greedy(task, gen.encode(prompts), max_new_tokens)
    return [gen.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
