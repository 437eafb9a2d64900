"""Every LoraConfig field that changes the forward, as two adapters' configs per model family.

A case gives, for a family, the keyword arguments of ``LoraConfig`` for adapter 0 and adapter 1,
optional edits of the saved adapter_config.json, and the expected outcome: "exact", or the config
field a refusal must name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from conformance.families import Family


@dataclass(frozen=True)
class Case:
    name: str
    configs: Callable[[Family, list[str]], tuple[dict, dict]]  # (family, module names) -> two LoraConfig kwargs
    expect: Callable[[Family], str] = lambda f: "exact"  # "exact" or the field a refusal names
    drop: tuple[str, ...] = ()  # keys removed from adapter 0's saved adapter_config.json
    applies: Callable[[Family], bool] = lambda f: True


def first(modules: list[str], suffix: str) -> str:
    """The first module (in model order) whose name ends with ``suffix``."""
    return next(m for m in modules if m == suffix or m.endswith("." + suffix))


def _targets(f: Family) -> list[str]:
    return list(f.attn) + list(f.mlp)


def _refused_if(cond: Callable[[Family], bool], field_name: str) -> Callable[[Family], str]:
    return lambda f: field_name if cond(f) else "exact"


CASES = [
    Case("r, lora_alpha", lambda f, m: (dict(r=2, lora_alpha=5, target_modules=list(f.attn)),
                                        dict(r=3, lora_alpha=2, target_modules=_targets(f)))),
    Case("lora_alpha absent from the config", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=list(f.attn)),
                                                            dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         drop=("lora_alpha",)),
    Case("use_rslora", lambda f, m: (dict(r=4, lora_alpha=6, use_rslora=True, target_modules=_targets(f)),
                                     dict(r=2, lora_alpha=4, target_modules=list(f.attn)))),
    Case("rank_pattern", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=_targets(f),
                                            rank_pattern={f.attn[-1]: 4}),
                                       dict(r=2, lora_alpha=4, target_modules=_targets(f),
                                            rank_pattern={re.escape(first(m, f.mlp[0])): 3}))),
    # two keys match layer 0's first attention module: PEFT takes the first key that matches
    Case("alpha_pattern (first matching key wins)", lambda f, m: (
        dict(r=2, lora_alpha=4, target_modules=list(f.attn),
             alpha_pattern={f.attn[0]: 7, re.escape(first(m, f.attn[0])): 3}),
        dict(r=2, lora_alpha=4, target_modules=_targets(f), alpha_pattern={f.mlp[0]: 1}))),
    Case("target_modules as a regex string", lambda f, m: (
        dict(r=2, lora_alpha=4, target_modules=rf".*\.({'|'.join(map(re.escape, f.attn))})"),
        dict(r=2, lora_alpha=4, target_modules=rf".*\.({'|'.join(map(re.escape, f.mlp))})"))),
    Case("target_modules='all-linear'", lambda f, m: (dict(r=2, lora_alpha=4, target_modules="all-linear"),
                                                     dict(r=2, lora_alpha=4, target_modules=list(f.attn)))),
    Case("layers_to_transform", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=list(f.attn), layers_to_transform=[1]),
                                              dict(r=2, lora_alpha=4, target_modules=list(f.attn)))),
    Case("layers_to_transform + layers_pattern", lambda f, m: (
        dict(r=2, lora_alpha=4, target_modules=_targets(f), layers_to_transform=[0], layers_pattern=f.layers_pattern),
        dict(r=2, lora_alpha=4, target_modules=list(f.attn), layers_to_transform=[1],
             layers_pattern=f.layers_pattern))),
    Case("exclude_modules", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=_targets(f),
                                               exclude_modules=[first(m, f.attn[0])]),
                                          dict(r=2, lora_alpha=4, target_modules=list(f.attn)))),
    Case("fan_in_fan_out (GPT-2 Conv1D)", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=_targets(f)),
                                                         dict(r=3, lora_alpha=3, target_modules=list(f.mlp))),
         applies=lambda f: f.name == "gpt2"),
    Case("modules_to_save", lambda f, m: (
        dict(r=2, lora_alpha=4, target_modules=list(f.attn), **({} if f.classifier else {"modules_to_save": ["lm_head"]})),
        dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         expect=_refused_if(lambda f: not f.classifier, "modules_to_save")),
    Case("bias='all'", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=list(f.attn), bias="all"),
                                     dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         expect=_refused_if(lambda f: f.has_bias, "bias")),
    Case("bias='lora_only'", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=list(f.attn), bias="lora_only"),
                                           dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         expect=_refused_if(lambda f: f.has_bias, "bias")),
    Case("lora_bias", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=list(f.attn), lora_bias=True),
                                    dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         expect=lambda f: "lora_bias"),
    Case("use_dora", lambda f, m: (dict(r=2, lora_alpha=4, target_modules=list(f.attn), use_dora=True),
                                   dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         expect=lambda f: "use_dora"),
    Case("LoRA on the embedding layer", lambda f, m: (
        dict(r=2, lora_alpha=4, target_modules=list(f.attn) + [f.embedding]),
        dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         expect=lambda f: "target_modules"),
    Case("target_parameters (a Linear weight)", lambda f, m: (
        dict(r=2, lora_alpha=4, target_modules=[], target_parameters=[f"{f.attn[0]}.weight"]),
        dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         applies=lambda f: f.name != "gpt2"),
    Case("init_lora_weights='pissa'", lambda f, m: (
        dict(r=2, lora_alpha=4, target_modules=list(f.attn), init_lora_weights="pissa"),
        dict(r=2, lora_alpha=4, target_modules=list(f.attn))),
         expect=lambda f: "init_lora_weights"),
]
