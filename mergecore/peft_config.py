"""A PEFT ``LoraConfig`` read the way the installed PEFT reads it.

PEFT is the oracle for everything it defines, so nothing here re-derives PEFT's rules:
    defaults       ``r`` and ``lora_alpha`` when a config omits them: ``peft.LoraConfig``'s own defaults
    patterns       ``rank_pattern`` / ``alpha_pattern`` keys matched as ``peft.utils.other.get_pattern_key`` does
                   (first matching key wins, the key matched against the module's dotted suffix), under a time bound
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

import regex
from peft import LoraConfig

from mergecore.errors import MergecoreError
from mergecore.files import read_json, read_regular_file

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


MATCH_SECONDS = 0.1  # one key against one module name: microseconds for any real key
MAX_KEY_CHARS = 1000  # a key is a module name or a short pattern
MAX_COUNTS = 10_000  # the {m,n} counts of a key multiplied
# where `regex` and `re` read a key differently: POSIX classes [[:alpha:]], fuzzy counts {e<=1}, and a negated
# set holding a class and its complement ([^\w\W] matches nothing in `re`)
_REGEX_ONLY = re.compile(r"\[:\^?\w*:\]|\{[^}]*[A-Za-z<=]|\[\^[^\]]*\\[WDS]")


def pattern_key(patterns, module: str, name: str = "rank_pattern", where: str = "adapter_config.json") -> str | None:
    """The key of pattern field ``name`` PEFT picks for ``module`` (None: no key matches).

    PEFT's ``get_pattern_key``: the first key ``k`` (in order) with ``re.match(rf"(.*\.)?({k})$", module)``, else
    the module's own name if it is a key. The keys come from an untrusted file, and ``re`` backtracks without
    bound on keys such as ``(.|.)*Z``, so the match runs in the ``regex`` package (the same syntax and
    semantics for what ``re`` compiles, VERSION0) under a ``MATCH_SECONDS`` time bound; a key over the bound,
    one ``re`` cannot compile, or one using syntax only ``regex`` reads is refused in one line. On non-ASCII
    module names ``regex``'s (newer) Unicode tables decide ``\w`` and case folding."""
    for key in patterns:
        if _matches(_compiled(str(key), name, where), module, key, name, where):
            return key
    return module if module in patterns else None


@lru_cache(maxsize=4096)
def _compiled(key: str, name: str, where: str):
    shown = repr(key) if len(key) <= 80 else repr(key[:80]) + "..."
    if len(key) > MAX_KEY_CHARS:
        raise MergecoreError(f"{where}: {name} key {shown} is longer than {MAX_KEY_CHARS} characters; "
                             "give a module name or a short regex")
    try:
        re.compile(rf"(.*\.)?({key})$")  # as PEFT compiles it: "(?i)" inside is an error there too
    except (re.error, RecursionError, OverflowError):
        raise MergecoreError(f"{where}: {name} key {shown} is not a valid regex; fix it") from None
    counts = [max(int(lo or 0), int(hi or 0), 1) for lo, hi in re.findall(r"\{(\d*),?(\d*)\}", key)]
    if math.prod(counts) > MAX_COUNTS:  # `regex` unrolls counted repeats when it compiles: {100} in {100} in {100}
        raise MergecoreError(f"{where}: {name} key {shown} repeats more than {MAX_COUNTS} times in all ({{m,n}} "
                             "counts multiplied); give a module name or a shorter regex")
    if _REGEX_ONLY.search(key):
        raise MergecoreError(f"{where}: {name} key {shown} uses a POSIX class, a brace that is not a repeat count or "
                             "a negated \\W/\\D/\\S in a set, read differently by the bounded matcher; write it plainly")
    try:
        return regex.compile(rf"(.*\.)?({key})$", flags=regex.VERSION0)
    except (regex.error, RecursionError, OverflowError):
        raise MergecoreError(f"{where}: {name} key {shown} is not a valid regex; fix it") from None


def _matches(pattern, module: str, key: str, name: str, where: str) -> bool:
    try:
        return pattern.match(module, timeout=MATCH_SECONDS) is not None
    except TimeoutError:
        shown = repr(key) if len(key) <= 80 else repr(key[:80]) + "..."
        raise MergecoreError(f"{where}: {name} key {shown} takes over {MATCH_SECONDS} s to match a module name "
                             "(catastrophic backtracking); simplify the regex, e.g. list the modules") from None


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
MAX_CONFIG_BYTES = 16 * 2**20  # a rank_pattern naming every module of a large model is well under 1 MiB


def target_list(targets) -> list[str]:
    """PEFT's target_modules: a list of names, or one regex string."""
    return [targets] if isinstance(targets, str) else sorted(map(str, targets or []))


def read_config(folder: Path) -> dict:
    f = folder / CONFIG_FILE
    if not f.exists():
        raise MergecoreError(f"{f} is missing; a PEFT adapter folder needs {CONFIG_FILE}")
    try:
        config = read_json(read_regular_file(f, MAX_CONFIG_BYTES, "adapter config").decode("utf-8"), str(f))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
