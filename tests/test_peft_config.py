"""peft_config reads a LoraConfig the way the installed PEFT does: PEFT's own functions and layers are the oracle.

Ranks, alphas and scalings are compared with the ``r`` / ``lora_alpha`` / ``scaling`` PEFT itself gives each
LoRA layer of a tiny model (``get_peft_model`` with the same config), pattern keys with
``peft.utils.other.get_pattern_key``, defaults with ``peft.LoraConfig()``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from mergecore.errors import MergecoreError
from mergecore.peft_config import (VARIANT_FIELDS, head_module, lora_defaults,
                                   module_rank_alpha, pattern_key, refusal, scaling, stray_tensor)

pytestmark = pytest.mark.usefixtures("one_thread")

WHERE = "cfg.json"


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.v, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_Block(), _Block()])


def peft_layers(config: dict) -> dict[str, tuple[int, float, float]]:
    """(r, lora_alpha, scaling) that PEFT gives each LoRA layer of a tiny model under ``config``."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    pm = get_peft_model(_Tiny(), LoraConfig(**config))
    out = {}
    for name, mod in pm.base_model.model.named_modules():
        if isinstance(mod, LoraLayer):
            out[name] = (mod.r["default"], mod.lora_alpha["default"], mod.scaling["default"])
    assert out
    return out


CONFIGS = {
    "r and alpha": dict(r=2, lora_alpha=5),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True),
    "rslora off explicitly": dict(r=4, lora_alpha=6, use_rslora=False),
    "no r": dict(lora_alpha=4),
    "no lora_alpha": dict(r=3),
    "neither (PEFT defaults)": dict(),
    "rank_pattern": dict(r=2, lora_alpha=4, rank_pattern={"q": 4, r"layers\.1\.v": 3}),
    "alpha_pattern, first matching key wins": dict(r=2, lora_alpha=4,
                                                   alpha_pattern={"q": 7, r"layers\.0\.q": 3, "fc": 2.5}),
    "both patterns with rslora": dict(r=2, lora_alpha=4, use_rslora=True, rank_pattern={r"layers\.0\.fc": 5},
                                      alpha_pattern={"v": 9}),
    "pattern keys that match nothing": dict(r=2, lora_alpha=3, rank_pattern={"k_proj": 6}, alpha_pattern={"o": 1}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rank_alpha_and_scaling_equal_peft_layers(name):
    config = dict(CONFIGS[name], target_modules=["q", "v", "fc"])
    layers = peft_layers(config)
    assert len(layers) == 6
    for module, (r, alpha, s) in layers.items():
        ours_r, ours_alpha = module_rank_alpha(config, module, WHERE)
        assert (ours_r, ours_alpha) == (r, alpha), module
        assert type(ours_r) is int and type(ours_alpha) is float
        assert scaling(config, ours_alpha, ours_r) == pytest.approx(s, rel=1e-12), module


def test_scaling_is_alpha_over_r_or_over_sqrt_r():
    """The paper formulas (LoRA: alpha / r; rsLoRA: alpha / sqrt(r)), which PEFT implements."""
    assert scaling({}, 6.0, 4) == 1.5
    assert scaling({"use_rslora": False}, 6.0, 4) == 1.5
    assert scaling({"use_rslora": True}, 6.0, 4) == 3.0
    assert scaling({"use_rslora": True}, 5.0, 3) == 5.0 / math.sqrt(3)


def test_defaults_are_peft_lora_config_defaults():
    from peft import LoraConfig

    assert lora_defaults() == {"r": LoraConfig().r, "lora_alpha": LoraConfig().lora_alpha}


KEYS = [r"layers\.0\.q", "q", "v", "fc", "layers.1.fc", "ayers.1.fc", "x"]
MODULES = ["layers.0.q", "layers.1.q", "layers.0.v", "layers.1.fc", "layers.0.fc", "q", "qq", "layers.0.k", "x"]


@pytest.mark.parametrize("keys", [KEYS, KEYS[::-1], ["q"], [], ["v", "fc"]])
def test_pattern_key_is_peft_get_pattern_key(keys):
    from peft.utils.other import get_pattern_key

    for module in MODULES:
        matched = [k for k in keys if re.match(rf"(.*\.)?({k})$", module)]
        expected = get_pattern_key(keys, module) if matched else None
        assert pattern_key({k: 1 for k in keys}, module, "rank_pattern", WHERE) == expected, module


# random keys over the syntax real keys use (and some they do not), against PEFT's re-based matcher
TOKENS = ["a", "q", "v", "fc", "0", "1", ".", r"\.", "*", "+", "?", "|", "(", ")", "[", "]", "^", "$", "-", "_",
          r"\w", r"\d", r"\b", r"\B", r"\W", "(?:", "(?=", "(?!", "(?<=", "*?", "+?", "{1,2}", "{2}", "[^", "layers",
          r"\1", "(?>", "++", r"\Z", r"\A", "{", "}", ",", ":", "(?i)", "Q"]
NAMES = ["layers.0.q", "layers.1.fc", "q", "qq", "a.q", "layers.10.v_proj", "model.Q.v", "x.0", "a-b.c_d"]


def test_bounded_matcher_agrees_with_peft_on_random_keys():
    """pattern_key runs in the regex package under a time bound; on every key PEFT's re compiles (and the
    matcher does not refuse) it picks what peft.utils.other.get_pattern_key picks."""
    import random

    from peft.utils.other import get_pattern_key

    rng, checked = random.Random(0), 0
    while checked < 3000:
        key = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 6)))
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error:
            continue
        for module in NAMES:
            try:
                got = pattern_key({key: 1}, module, "rank_pattern", WHERE)
            except MergecoreError as exc:
                assert "POSIX class" in str(exc) or "takes over" in str(exc), (key, str(exc))
                break
            expected = get_pattern_key([key], module)
            assert got == (expected if expected == key or module == key else None), (key, module)
        checked += 1


def test_invalid_pattern_key_names_field_and_key():
    with pytest.raises(MergecoreError, match=r"^cfg\.json: alpha_pattern key 'q\(' is not a valid regex; fix it$"):
        pattern_key({"v": 1, "q(": 2}, "layers.0.q", "alpha_pattern", WHERE)
    with pytest.raises(MergecoreError,
                       match=r"^adapter_config\.json: rank_pattern key '\[a' is not a valid regex; fix it$"):
        pattern_key({"[a": 2}, "layers.0.q")
    with pytest.raises(MergecoreError, match=r"^cfg\.json: alpha_pattern key 'q\(' is not a valid regex; fix it$"):
        module_rank_alpha({"r": 2, "alpha_pattern": {"q(": 2}}, "layers.0.q", WHERE)
    with pytest.raises(MergecoreError, match=r"^cfg\.json: rank_pattern key 'q\(' is not a valid regex; fix it$"):
        module_rank_alpha({"r": 2, "rank_pattern": {"q(": 2}, "alpha_pattern": {"q(": 2}}, "layers.0.q", WHERE)


@pytest.mark.parametrize("value", [True, "8", None, float("nan"), float("inf"), [2]])
def test_non_numbers_are_refused_naming_the_field(value):
    with pytest.raises(MergecoreError, match=rf"^cfg\.json: r is {re.escape(repr(value))}, not a finite number; "
                                             r"fix it or re-save the adapter with PEFT$"):
        module_rank_alpha({"r": value, "lora_alpha": 4}, "layers.0.q", WHERE)
    with pytest.raises(MergecoreError, match=rf"^cfg\.json: lora_alpha is {re.escape(repr(value))}, not a finite"):
        module_rank_alpha({"r": 2, "lora_alpha": value}, "layers.0.q", WHERE)
    with pytest.raises(MergecoreError, match=rf"^cfg\.json: alpha_pattern\['q'\] is {re.escape(repr(value))}, not a"):
        module_rank_alpha({"r": 2, "alpha_pattern": {"q": value}}, "layers.0.q", WHERE)
    with pytest.raises(MergecoreError, match=rf"^cfg\.json: r is {re.escape(repr(value))}, not a finite"):
        module_rank_alpha({"r": 2, "rank_pattern": {"q": value}}, "layers.0.q", WHERE)


@pytest.mark.parametrize("name", ["rank_pattern", "alpha_pattern"])
def test_pattern_not_an_object_is_refused(name):
    with pytest.raises(MergecoreError, match=rf"^cfg\.json: {name} must be a JSON object; "
                                             r"fix it or re-save the adapter with PEFT$"):
        module_rank_alpha({"r": 2, name: ["q"]}, "layers.0.q", WHERE)
    assert module_rank_alpha({"r": 2, "lora_alpha": 3, name: None}, "layers.0.q", WHERE) == (2, 3.0)


def test_refusal_names_each_variant_field():
    from peft import LoraConfig

    fields = set(LoraConfig.__dataclass_fields__)
    for name, why in VARIANT_FIELDS.items():
        if name != "use_bdlora":  # newer PEFT only
            assert name in fields, name
        assert refusal({name: True}) == (f"{name} is set ({why}); mergecore merges plain LoRA only, "
                                          f"retrain without {name}")
        assert refusal({name: False}) is None and refusal({name: None}) is None
    assert refusal({"use_dora": False, "lora_bias": True}).startswith("lora_bias is set (lora_B carries a bias)")
    assert refusal({"r": 8, "lora_alpha": 16, "target_modules": ["q"]}) is None


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq", "lora_ga"])
def test_base_changing_inits_are_refused(init):
    assert refusal({"init_lora_weights": init}) == (
        f"init_lora_weights={init!r} rewrote the base weights, so the adapter needs that changed base; "
        "save it with PEFT's path_initial_model_for_weight_conversion to get a plain LoRA")


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal", None])
def test_plain_inits_are_accepted(init):
    assert refusal({"init_lora_weights": init}) is None


def test_target_parameters_other_than_a_weight_are_refused():
    assert refusal({"target_parameters": ["layers.0.q.weight", "fc.weight"]}) is None
    assert refusal({"target_parameters": None}) is None
    params = ["layers.0.q.weight", "mlp.experts.gate_up_proj"]
    assert refusal({"target_parameters": params}) == (
        f"target_parameters {params} names parameters other than a Linear weight (e.g. MoE experts); "
        "only Linear weights can be merged, target those modules with target_modules")


def test_head_module_matches_modules_to_save_as_dotted_suffixes():
    assert head_module("classifier.weight", ["classifier"]) == "classifier"
    assert head_module("classifier.weight", "classifier") == "classifier"
    assert head_module("bert.pooler.dense.bias", ["pooler"]) == "bert.pooler"
    assert head_module("bert.pooler.dense.bias", ["pooler.dense"]) == "bert.pooler.dense"
    assert head_module("score.out_proj.weight", ["dense", "out_proj"]) == "score.out_proj"
    assert head_module("my_classifier.weight", ["classifier"]) is None  # a suffix, but not a dotted one
    assert head_module("classifier.weight", None) is None
    assert head_module("classifier.weight", []) is None
    assert head_module("classifier", ["classifier"]) is None  # a module, not a tensor of it
    assert head_module("a.b.c.weight", ["b"]) == "a.b"  # the shortest matching prefix


def test_head_module_agrees_with_peft_modules_to_save():
    """PEFT wraps exactly the modules whose names match a modules_to_save entry as a dotted suffix."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(_Tiny(), LoraConfig(r=2, target_modules=["q"], modules_to_save=["fc", "1.v"]))
    saved = {k.removeprefix("base_model.model.") for k in pm.state_dict() if "modules_to_save" in k}
    wrapped = {k.split(".modules_to_save.")[0] for k in saved}
    assert wrapped == {"layers.0.fc", "layers.1.fc", "layers.1.v"}
    for name in ("layers.0.fc", "layers.1.fc", "layers.1.v", "layers.0.v", "layers.0.q"):
        expected = name if name in wrapped else None
        assert head_module(name + ".weight", ["fc", "1.v"]) == expected, name


STRAYS = {
    "base_model.model.emb.lora_embedding_A.default": ({}, "is LoRA on an embedding layer (target_modules); only Linear "
                                                     "layers can be merged, retrain without targeting embeddings"),
    "q.lora_B.bias": ({}, "is a bias of lora_B (lora_bias=True); retrain with lora_bias=False"),
    "q.lora_magnitude_vector": ({}, "is a DoRA magnitude (use_dora); merge plain LoRA adapters"),
    "emb.trainable_tokens_delta": ({}, "holds trainable tokens (trainable_token_indices); retrain without them"),
    "q.bias": ({"bias": "all"}, "is a base-model bias trained with bias='all'; mergecore merges LoRA factors and "
                                "heads only, retrain with bias='none'"),
    "fc.bias": ({"bias": "lora_only", "modules_to_save": ["x"]},
                "is a base-model bias trained with bias='lora_only'; mergecore merges LoRA factors and "
                "heads only, retrain with bias='none'"),
    "fc.bias ": ({"bias": "none", "modules_to_save": ["x"]},
                 "is neither a lora_A/lora_B factor nor under modules_to_save ['x']; re-save a plain LoRA adapter "
                 "with PEFT"),
    "q.weight": ({"bias": "all"}, "is neither a lora_A/lora_B factor nor under modules_to_save None; re-save a "
                                  "plain LoRA adapter with PEFT"),
    "q.lora_B.weight.bias": ({}, "is a bias of lora_B (lora_bias=True); retrain with lora_bias=False"),
}


@pytest.mark.parametrize("key", list(STRAYS))
def test_stray_tensor_says_why(key):
    config, why = STRAYS[key]
    key = key.strip()
    assert stray_tensor(key, config) == f"{key} {why}"


def test_stray_bias_without_a_bias_field_is_plain_stray():
    assert stray_tensor("q.bias", {}) == ("q.bias is neither a lora_A/lora_B factor nor under modules_to_save None; "
                                          "re-save a plain LoRA adapter with PEFT")
    assert stray_tensor("q.lora_B.weight", {}).startswith("q.lora_B.weight is neither")
