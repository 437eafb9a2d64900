"""Model families: which reader a base model needs, and loading it from a folder or the hub.

    classifier  encoder + per-task head (BERT, RoBERTa, MiniLM; PEFT task_type SEQ_CLS)
    seq2seq     encoder-decoder LM scoring verbalizers (T5, Flan-T5; SEQ_2_SEQ_LM)
    causal      decoder-only LM scoring verbalizers (Llama, Qwen, SmolLM, BLOOM; CAUSAL_LM)

``load_base(name, family)`` resolves ``name`` (a local folder; a packaged offline model:
MiniLM, SmolLM2; else a hub id, fetched only when online), refuses models that need custom code
unless ``trust_remote_code`` is given, and turns "not found offline" into one line naming the
missing hub id and the fix (``--base-model PATH``). ``base_path`` overrides where the base is
read from while keeping the adapters' hub id as its name (adapters whose config names a hub id).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mergecore.errors import MergecoreError

FAMILIES = ("classifier", "seq2seq", "causal")
PEFT_TASK_TYPES = {"SEQ_CLS": "classifier", "SEQ_2_SEQ_LM": "seq2seq", "CAUSAL_LM": "causal"}
CAUSAL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "bloom", "phi", "phi3", "gemma", "gemma2",
                "olmo", "opt", "falcon", "smollm3")


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


def model_cache() -> Path:
    """Where converted offline models live (``$MERGECORE_MODEL_CACHE``, default ~/.cache/mergecore/models)."""
    return Path(os.environ.get("MERGECORE_MODEL_CACHE", "~/.cache/mergecore/models")).expanduser()


def resolve(name: str, base_path: str | None = None) -> str:
    """A local folder for ``name`` when one is known or given, else ``name`` (a hub id)."""
    from mergecore import smollm
    from mergecore.bases import resolve_base

    if base_path:
        if not Path(base_path).expanduser().is_dir():
            raise MergecoreError(f"base model folder {base_path} does not exist; pass the folder holding config.json")
        return str(Path(base_path).expanduser())
    if name in smollm.HUB_IDS and smollm.available():
        return str(smollm.smollm_dir(model_cache()))
    if looks_local(name) and not Path(name).expanduser().exists():
        raise MergecoreError(f"base model folder {name} does not exist; pass the folder holding config.json "
                             "with --base-model PATH")
    return resolve_base(name)


def looks_local(name: str) -> bool:
    """A path, not a hub id: starts with /, ./, ../ or ~, or has a separator a hub id ('owner/name') cannot have."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    starts = ("/", "~") + tuple(d + sep for d in (".", "..") for sep in seps)
    return (name.startswith(starts) or name in (".", "..") or name.count("/") > 1
            or any(sep in name for sep in seps - {"/"}))


ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                 "mpnet", "camembert", "ernie", "modernbert", "nomic_bert")


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


def _config(path: str, name: str, trust_remote_code: bool):
    from transformers import AutoConfig

    from mergecore.bases import refuse_custom_code

    if not trust_remote_code and Path(path).is_dir():
        refuse_custom_code(path, name)  # config.json and tokenizer_config.json auto_map
    local = Path(path) / "config.json"
    if local.is_file() and not trust_remote_code:
        try:
            raw = json.loads(local.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MergecoreError(f"{local} is not valid JSON ({exc}); re-save the base model") from None
        if raw.get("auto_map"):
            raise MergecoreError(f"base model {name!r} needs custom code (auto_map in config.json); "
                                 "only if you trust it, opt in with --trust-remote-code")
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


def load_base(name: str, family: str | None = None, trust_remote_code: bool = False,
              base_path: str | None = None, num_labels: int = 2):
    """(model, tokenizer, family) for ``name``; ``family`` None means detect it from the config."""
    from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification, AutoTokenizer)

    from mergecore.bases import UNREADABLE_WEIGHTS, _quiet_transformers, unreadable_weights

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
    kw = {"trust_remote_code": trust_remote_code}
    try:
        if family == "classifier":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                       ignore_mismatched_sizes=True, **kw)
        else:
            cls = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
            model = cls.from_pretrained(path, dtype="float32", **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except UNREADABLE_WEIGHTS as exc:
        raise unreadable_weights(name, exc) from None
    except OSError as exc:
        raise _missing(name, exc) from None
    except ValueError as exc:
        raise MergecoreError(f"base model {name!r} is not a {family} model ({str(exc).splitlines()[0][:120]}); "
                             "pick the right --family") from None
    return model.eval(), tokenizer, family


def open_bench(adapters, tasks, device: str | None = None, trust_remote_code: bool = False,
               base_model: str | None = None, family: str | None = None, base_path: str | None = None,
               max_length: int = 256):
    """A Workbench for any family: load the base, wrap it, pick the reader."""
    from mergecore.forward.classifier import ClassifierReader
    from mergecore.forward.model import MergeModel
    from mergecore.forward.verbalizer import make_reader
    from mergecore.forward.workbench import Workbench, resolve_device

    name = base_model or adapters.base_model
    if not name and not base_path:
        raise MergecoreError("the adapters name no base model; pass --base-model PATH_OR_HUB_ID")
    family = family or family_of_adapters(adapters)
    model, tokenizer, family = load_base(name or base_path, family, trust_remote_code, base_path)
    if family == "classifier":
        mm = MergeModel(model, adapters).to(resolve_device(device))
        return Workbench(adapters, tasks, mm, ClassifierReader(tokenizer), base_name=name)
    mm = MergeModel(model, adapters, with_heads=False).to(resolve_device(device))
    reader = make_reader(family, tasks, tokenizer, model.config, max_length=max_length)
    return Workbench(adapters, tasks, mm, reader, base_name=name or base_path)
