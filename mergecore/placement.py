"""How the base model's weights are held: dtype, quantization (bitsandbytes) and placement (accelerate device maps).

``LoadParams`` is the one definition the CLI flags (``--dtype``, ``--quantize``, ``--device-map``), the app's form
and the run config derive from. ``pretrained_kwargs`` turns it into ``from_pretrained`` arguments:

    dtype       auto: the checkpoint's dtype on CUDA, float32 on CPU; or float32 / bfloat16 / float16
    quantize    nf4 | int8 through bitsandbytes (QLoRA bases); the LoRA term is added to the quantized layer's
                output, the heads of a classifier stay unquantized, export is unchanged (adapters are not quantized)
    device_map  auto | balanced | a JSON file {module: device}; "disk" entries are offloaded to a folder

Whatever the base holds, the LoRA path (factors, coefficients, losses) runs in float32, as PEFT keeps adapter
weights in float32 (``autocast_adapter_dtype``) and casts the layer input to them.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mergecore.errors import MergecoreError
from mergecore.fields import param
from mergecore.files import read_json, read_regular_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZE = ("nf4", "int8")
DEVICE_MAPS = ("auto", "balanced")


@dataclass(frozen=True)
class LoadParams:
    """How the base model is loaded (the adapters and the coefficients are float32 whatever this says)."""

    dtype: str = param(
        "auto", "Base weights dtype", "dtype the base model's weights are loaded in: auto = the checkpoint's dtype on a GPU, "
        "float32 on the CPU; bfloat16 halves the memory of float32 (the papers' 8B / 14B bases are bf16)",
        choices=("auto", *DTYPES))
    quantize: str | None = param(
        None, "Quantize the base", "nf4 (4-bit, QLoRA) or int8 through bitsandbytes; the LoRA term is added to the "
        "quantized layer's output", choices=QUANTIZE, none_label="none")
    device_map: str | None = param(
        None, "Device map", "spread the base over devices with accelerate: auto, balanced, or a JSON file "
        "{module: device} (\"cpu\", \"cuda:0\", \"disk\" = offloaded to a folder); none = one device",
        none_label="none")

    def validate(self) -> "LoadParams":
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise MergecoreError(f"unknown dtype {self.dtype!r}; valid: auto, {', '.join(DTYPES)}")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise MergecoreError(f"unknown quantization {self.quantize!r}; valid: {', '.join(QUANTIZE)} (or none)")
        if self.device_map is not None:
            device_map_arg(self.device_map)
        return self

    @property
    def placed(self) -> bool:
        """True when transformers places the weights at load time (device map or quantization)."""
        return self.device_map is not None or self.quantize is not None


def torch_dtype(dtype: str, config, device: torch.device) -> torch.dtype:
    """The dtype the base is loaded in; ``auto`` = the checkpoint's on CUDA (float32 if it names none), float32 else."""
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type != "cuda":
        return torch.float32
    saved = getattr(config, "dtype", None)  # transformers 5 names it dtype (torch_dtype is its old alias)
    if isinstance(saved, str):
        saved = DTYPES.get(saved)
    return saved if saved in DTYPES.values() else torch.float32


def device_map_arg(value: str) -> str | dict:
    """auto / balanced as given; else the JSON file's {module: device} mapping (one line when it cannot be read)."""
    if value in DEVICE_MAPS:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise MergecoreError(f"device map {value!r} is neither auto, balanced nor a JSON file; "
                             "give --device-map auto|balanced|FILE.json")
    try:
        mapping = read_json(read_regular_file(path, 2**20, "device map").decode("utf-8"), f"device map {path}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergecoreError(f"device map {path} is not valid JSON ({exc}); write {{\"module\": \"device\"}}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, (str, int)) for v in mapping.values()):
        raise MergecoreError(f"device map {path} must be a JSON object {{\"module\": \"device\"}} "
                             "(devices: \"cpu\", \"cuda:0\", 0, \"disk\")")
    return mapping


def quantization_config(kind: str, compute: torch.dtype, skip: list[str]):
    """bitsandbytes' config for ``nf4`` / ``int8``; one line naming what is missing when it cannot run here."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MergecoreError(f"quantizing the base ({kind}) needs bitsandbytes; pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                  bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip or None)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip or None)


def pretrained_kwargs(params: LoadParams, config, device: torch.device, skip: list[str]) -> dict:
    """``from_pretrained`` keyword arguments for ``params`` on ``device``; ``skip``: modules never quantized
    (a classifier's heads, which every task replaces)."""
    params.validate()
    dtype = torch_dtype(params.dtype, config, device)
    kw: dict = {"dtype": str(dtype).removeprefix("torch.")}  # by name: a torch.dtype in the config breaks saving
    if params.quantize:
        compute = dtype if dtype != torch.float32 or device.type == "cpu" else torch.bfloat16
        kw["quantization_config"] = quantization_config(params.quantize, compute, skip)
    if params.device_map is not None:
        kw["device_map"] = device_map_arg(params.device_map)  # "disk" entries: transformers picks the folder
    elif params.quantize:
        kw["device_map"] = {"": str(device)}  # a quantized model is placed at load time
    return kw
