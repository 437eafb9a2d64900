"""A PEFT ``LoraConfig`` read the way the installed PEFT reads it.

PEFT is the oracle for everything it defines, so nothing here re-derives PEFT's rules:
    defaults       ``r`` and ``lora_alpha`` when a config omits them: ``peft.LoraConfig``'s own defaults
    patterns       ``rank_pattern`` / ``alpha_pattern`` keys matched by ``peft.utils.other.get_pattern_key``
                   (first matching key wins, the key matched against the module's dotted suffix)
    scaling        alpha / r, or alpha / sqrt(r) with ``use_rslora`` (``LoraLayer.update_layer``)
    heads          saved tensors outside the LoRA factors belong to a ``modules_to_save`` entry
                   (PEFT matches those entries as dotted suffixes of module names)

Fields whose forward mergecore does not reproduce as ``W0 x + s B A x`` on a Linear are refused with
one line naming the field and what to do (see ``refusal``); docs/peft-conformance.md lists every field
x model family as exact or refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from functools import lru_cache
from pathlib import Path

from peft import LoraConfig
from peft.utils.other import get_pattern_key

from mergecore.errors import MergecoreError

# init_lora_weights values that rewrite the base weights (the adapter is relative to a changed base)
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
# config fields that change the forward beyond W0 x + s B A x; value -> refused when truthy
VARIANT_FIELDS = {
    "use_dora": "DoRA rescales the weight's column norms",
    "lora_bias": "lora_B carries a bias",
    "use_qalora": "QALoRA pools the input before lora_A",
    "alora_invocation_tokens": "activated LoRA applies only after the invocation tokens",
    "layer_replication": "layer replication changes the base model's layer stack",
    "trainable_token_indices": "trainable tokens change embedding rows",
    "kasa_config": "KaSA changes the base weight's singular values",
    "monteclora_config": "MonteCLoRA samples the factors",
    "arrow_config": "Arrow routes between adapters per token",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
}


@lru_cache(maxsize=1)
def lora_defaults() -> dict[str, object]:
    """``r`` and ``lora_alpha`` defaults of the installed ``peft.LoraConfig``."""
    fields = {f.name: f.default for f in dataclasses.fields(LoraConfig)}
    return {"r": fields["r"], "lora_alpha": fields["lora_alpha"]}


def pattern_key(patterns, module: str, name: str = "rank_pattern", where: str = "adapter_config.json") -> str | None:
    """The key of pattern field ``name`` PEFT picks for ``module`` (None: no key matches)."""
    keys = list(patterns)
    try:
        key = get_pattern_key(keys, module)
    except re.error:
        bad = next(k for k in keys if not _compiles(k))
        raise MergecoreError(f"{where}: {name} key {bad!r} is not a valid regex; fix it") from None
    return key if key in keys else None


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
        return True
    except re.error:
        return False


def _number(value, where: str) -> float:
    """A finite number (not a bool, string or null), else one line naming the config field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MergecoreError(f"{where} is {value!r}, not a finite number; fix it or re-save the adapter with PEFT")
    return float(value)


def _pattern(config: dict, name: str, where: str) -> dict:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise MergecoreError(f"{where}: {name} must be a JSON object; fix it or re-save the adapter with PEFT")
    return value


def module_rank_alpha(config: dict, module: str, where: str) -> tuple[int, float]:
    """(r, lora_alpha) PEFT gives ``module``: its pattern entry, else the config value, else PEFT's default."""
    defaults = lora_defaults()
    ranks, alphas = _pattern(config, "rank_pattern", where), _pattern(config, "alpha_pattern", where)
    r_key = pattern_key(ranks, module, "rank_pattern", where)
    a_key = pattern_key(alphas, module, "alpha_pattern", where)
    r = ranks[r_key] if r_key is not None else config.get("r", defaults["r"])
    alpha = alphas[a_key] if a_key is not None else config.get("lora_alpha", defaults["lora_alpha"])
    alpha_where = f"{where}: alpha_pattern[{a_key!r}]" if a_key is not None else f"{where}: lora_alpha"
    return int(_number(r, f"{where}: r")), _number(alpha, alpha_where)


def scaling(config: dict, alpha: float, rank: int) -> float:
    """PEFT's LoRA scaling: alpha / r, or alpha / sqrt(r) with use_rslora."""
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def refusal(config: dict) -> str | None:
    """Why an adapter with this config cannot be merged exactly (one clause naming the field), or None."""
    for name, why in VARIANT_FIELDS.items():
        if config.get(name):
            return f"{name} is set ({why}); mergecore merges plain LoRA only, retrain without {name}"
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        return (f"init_lora_weights={init!r} rewrote the base weights, so the adapter needs that changed base; "
                "save it with PEFT's path_initial_model_for_weight_conversion to get a plain LoRA")
    params = config.get("target_parameters") or []
    if any(not str(p).endswith("weight") for p in params):
        return (f"target_parameters {list(params)} names parameters other than a Linear weight (e.g. MoE experts); "
                "only Linear weights can be merged, target those modules with target_modules")
    return None


def head_module(key: str, modules_to_save) -> str | None:
    """The module of ``modules_to_save`` a saved tensor belongs to (PEFT matches entries as dotted suffixes)."""
    if isinstance(modules_to_save, str):
        modules_to_save = [modules_to_save]
    targets = [str(m) for m in modules_to_save or []]
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if any(prefix == m or prefix.endswith("." + m) for m in targets):
            return prefix
    return None


def stray_tensor(key: str, config: dict) -> str:
    """One clause saying why a saved tensor that is neither a LoRA factor nor a head cannot be merged."""
    if ".lora_embedding_" in key:
        return (f"{key} is LoRA on an embedding layer (target_modules); only Linear layers can be merged, "
                "retrain without targeting embeddings")
    if ".lora_B." in key and key.endswith(".bias"):
        return f"{key} is a bias of lora_B (lora_bias=True); retrain with lora_bias=False"
    if ".lora_magnitude_vector" in key:
        return f"{key} is a DoRA magnitude (use_dora); merge plain LoRA adapters"
    if "trainable_tokens" in key:
        return f"{key} holds trainable tokens (trainable_token_indices); retrain without them"
    if key.endswith(".bias") and str(config.get("bias", "none")) != "none":
        return (f"{key} is a base-model bias trained with bias={config.get('bias')!r}; mergecore merges LoRA "
                "factors and heads only, retrain with bias='none'")
    return (f"{key} is neither a lora_A/lora_B factor nor under modules_to_save "
            f"{config.get('modules_to_save')}; re-save a plain LoRA adapter with PEFT")


CONFIG_FILE = "adapter_config.json"


def target_list(targets) -> list[str]:
    """PEFT's target_modules: a list of names, or one regex string."""
    return [targets] if isinstance(targets, str) else sorted(map(str, targets or []))


def read_config(folder: Path) -> dict:
    f = folder / CONFIG_FILE
    if not f.is_file():
        raise MergecoreError(f"{f} is missing; a PEFT adapter folder needs {CONFIG_FILE}")
    try:
        config = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergecoreError(f"{f} is not valid JSON ({exc}); re-save the adapter with PEFT") from None
    if not isinstance(config, dict):
        raise MergecoreError(f"{f} must hold a JSON object; re-save the adapter with PEFT")
    ptype = str(config.get("peft_type", "")).upper()
    if ptype != "LORA":
        raise MergecoreError(f"{f}: peft_type is {ptype or 'missing'}; only LORA adapters can be merged, "
                             "pass a LoRA adapter")
    why = refusal(config)
    if why:
        raise MergecoreError(f"{f}: {why}")
    return config
