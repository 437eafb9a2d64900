"""AdapterSet: K PEFT LoRA adapters of one base model, validated on load.

Each adapter contributes, per target module ``m`` (a Linear of shape out x in), factors
``A`` (r x in), ``B`` (out x r) and a scaling ``s = alpha / r`` (``alpha / sqrt(r)`` for
rsLoRA), so its weight delta is ``s * B @ A``. Different ranks and different target-module sets
are legal: a module an adapter does not target has a zero delta there.

Everything the user can get wrong raises ``MergecoreError`` with one line naming the file and
the fix. Weights load from ``.safetensors``; a ``.bin`` pickle only with ``allow_bin=True`` and
then with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub
import torch
from safetensors.torch import load as load_st

from mergecore.errors import MergecoreError
from mergecore.peft_config import (
    CONFIG_FILE,
    head_module,
    module_rank_alpha,
    read_config,
    scaling,
    stray_tensor,
    target_list,
)

WEIGHTS_FILE = "adapter_model.safetensors"


BIN_FILE = "adapter_model.bin"


_PREFIX = "base_model.model."


_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraFactors:
    """One adapter on one module: delta = scale * B @ A."""

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """Dense delta (out, in); for tests and dense-only methods, never on a hot path."""
        return self.scale * (self.B.double() @ self.A.double())


@dataclass(frozen=True)
class Adapter:
    name: str
    source: str  # folder path or hub id
    config: dict
    factors: dict[str, LoraFactors]  # module name (relative to the base model) -> factors
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save (heads)
    sha256: str = ""

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")

    @property
    def ranks(self) -> dict[str, int]:
        return {m: f.rank for m, f in self.factors.items()}

    @property
    def head_modules(self) -> list[str]:
        """The ``modules_to_save`` modules (heads) whose trained copies the adapter saved."""
        mts = self.config.get("modules_to_save")
        return sorted({head_module(k, mts) or k.rsplit(".", 1)[0] for k in self.extra})


def natural_key(name: str) -> list:
    """Sort module names in model order: 'layer.10' after 'layer.9'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class AdapterSet:
    adapters: tuple[Adapter, ...]

    def __post_init__(self):
        if not self.adapters:
            raise MergecoreError("no adapters given; pass at least one PEFT LoRA adapter folder")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise MergecoreError(f"duplicate adapter names {names}; give each adapter folder a distinct name")
        _check_same_base(self.adapters)
        _check_shapes(self.adapters)

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    @property
    def base_model(self) -> str:
        return self.adapters[0].base_model

    @property
    def modules(self) -> list[str]:
        """Union of target modules over adapters, in model order."""
        return sorted({m for a in self.adapters for m in a.factors}, key=natural_key)

    def shape(self, module: str) -> tuple[int, int]:
        for a in self.adapters:
            if module in a.factors:
                f = a.factors[module]
                return (f.B.shape[0], f.A.shape[1])
        raise MergecoreError(f"no adapter targets module {module!r}; pick one of the adapters' modules")

    def factors(self, module: str) -> list[LoraFactors | None]:
        """Per adapter (in order) its factors on ``module``, or None where it does not target it."""
        return [a.factors.get(module) for a in self.adapters]

    def subset(self, names: list[str]) -> "AdapterSet":
        by = {a.name: a for a in self.adapters}
        missing = [n for n in names if n not in by]
        if missing:
            raise MergecoreError(f"unknown adapters {missing}; known: {', '.join(by)}")
        return AdapterSet(tuple(by[n] for n in names))

    def report(self) -> list[dict]:
        """One row per adapter for the compatibility report."""
        rows = []
        for a in self.adapters:
            ranks = sorted(set(a.ranks.values()))
            rows.append({
                "adapter": a.name, "base_model": a.base_model, "ranks": ranks,
                "modules": len(a.factors), "target_modules": target_list(a.config.get("target_modules")),
                "heads": a.head_modules, "sha256": a.sha256[:12], "source": a.source,
            })
        return rows


def _check_same_base(adapters: tuple[Adapter, ...]) -> None:
    bases = {a.base_model for a in adapters}
    if len(bases) > 1:
        detail = ", ".join(f"{a.name}: {a.base_model or '(none)'}" for a in adapters)
        raise MergecoreError(
            f"adapters were trained on different base models ({detail}); merge only adapters of one base"
        )


def _check_shapes(adapters: tuple[Adapter, ...]) -> None:
    seen: dict[str, tuple[tuple[int, int], str]] = {}
    for a in adapters:
        for m, f in a.factors.items():
            shape = (f.B.shape[0], f.A.shape[1])
            if m in seen and seen[m][0] != shape:
                raise MergecoreError(
                    f"shape mismatch on module {m}: {a.name} has {shape}, {seen[m][1]} has {seen[m][0]};"
                    " the adapters do not belong to the same base model"
                )
            seen.setdefault(m, (shape, a.name))


def load_adapter(path: str | Path, name: str | None = None, allow_bin: bool = False) -> Adapter:
    """Load one PEFT LoRA adapter folder (or a hub id when online)."""
    folder = _resolve(path)
    config = read_config(folder)
    tensors, sha = _read_weights(folder, allow_bin)
    factors, extra = _split_tensors(tensors, config, folder)
    is_hub = not Path(path).expanduser().exists()
    default_name = str(path).split("/")[-1] if is_hub else folder.name  # a hub id is "owner/name"
    return Adapter(name=name or default_name, source=str(path), config=config,
                   factors=factors, extra=extra, sha256=sha)


def load_adapters(paths: list[str | Path], allow_bin: bool = False,
                  base_model: str | None = None) -> AdapterSet:
    """Load and cross-validate adapters; ``base_model`` overrides every config's base."""
    adapters = []
    for p in paths:
        a = load_adapter(p, allow_bin=allow_bin)
        if base_model:
            a = Adapter(a.name, a.source, {**a.config, "base_model_name_or_path": base_model},
                        a.factors, a.extra, a.sha256)
        adapters.append(a)
    return AdapterSet(tuple(adapters))


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise MergecoreError(f"{p} is a file; pass the adapter folder that holds {CONFIG_FILE}")
        return p
    if re.fullmatch(r"\w[\w.-]*/\w[\w.-]*", str(path)):  # a hub id: owner/name, no part starts with . (../x)
        return _download(str(path))
    raise MergecoreError(f"adapter folder {p} does not exist; pass a PEFT adapter folder or a hub id")


def _download(repo_id: str) -> Path:
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))
    except Exception as exc:  # offline, unknown repo, auth
        raise MergecoreError(
            f"could not fetch adapter {repo_id!r} from the hub ({type(exc).__name__}); "
            "check the id and network, or download it and pass the local folder"
        ) from None


def _read_weights(folder: Path, allow_bin: bool) -> tuple[dict[str, torch.Tensor], str]:
    st, binf = folder / WEIGHTS_FILE, folder / BIN_FILE
    if st.is_file():
        data = st.read_bytes()
        try:
            tensors = load_st(data)
        except Exception as exc:
            raise MergecoreError(
                f"{st} is corrupt or truncated ({type(exc).__name__}); re-export the adapter"
            ) from None
        return tensors, hashlib.sha256(data).hexdigest()
    if binf.is_file():
        if not allow_bin:
            raise MergecoreError(
                f"{binf} is a pickle; convert it to {WEIGHTS_FILE} or opt in with --allow-bin"
            )
        data = binf.read_bytes()
        try:
            tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MergecoreError(f"{binf} could not be read safely ({type(exc).__name__}); re-export it") from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise MergecoreError(f"{binf} is not a state dict of tensors; re-export the adapter with PEFT")
        return dict(tensors), hashlib.sha256(data).hexdigest()
    raise MergecoreError(f"{st} is missing; a PEFT adapter folder needs {WEIGHTS_FILE}")


def _split_tensors(tensors: dict[str, torch.Tensor], config: dict, folder: Path):
    parts: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    rels = {key: key[len(_PREFIX):] if key.startswith(_PREFIX) else key for key in tensors}
    stray = [rel for rel in rels.values() if not _LORA_KEY.match(rel)
             and (".lora_" in rel or head_module(rel, config.get("modules_to_save")) is None)]
    if stray:  # the most specific reason first (a LoRA-side tensor before a plain stray one)
        rel = min(stray, key=lambda r: (".lora_" not in r, "trainable_tokens" not in r, r))
        raise MergecoreError(f"{folder / WEIGHTS_FILE}: {stray_tensor(rel, config)}")
    for key, rel in rels.items():
        m = _LORA_KEY.match(rel)
        if m:
            parts.setdefault(m["module"], {})[m["which"]] = tensors[key]
        else:
            extra[rel] = tensors[key].float()
    if not parts:
        raise MergecoreError(f"{folder / WEIGHTS_FILE} holds no lora_A/lora_B weights; pass a PEFT LoRA adapter folder")
    factors = {}
    for module, ab in parts.items():
        factors[module] = _factors(ab, module, config, folder)
    lm_task = str(config.get("task_type") or "").upper() in ("CAUSAL_LM", "SEQ_2_SEQ_LM")
    if extra and lm_task:
        raise MergecoreError(f"{folder / WEIGHTS_FILE}: modules_to_save {config.get('modules_to_save')} saved whole "
                             f"modules of a {config.get('task_type')} model; mergecore merges their LoRA factors only, "
                             "retrain without modules_to_save")
    for k, t in extra.items():
        if not torch.isfinite(t).all():
            raise MergecoreError(f"{folder / WEIGHTS_FILE}: {k} holds NaN or Inf; retrain or re-export the adapter")
    return factors, extra


def _factors(ab: dict[str, torch.Tensor], module: str, config: dict, folder: Path) -> LoraFactors:
    where = f"{folder / WEIGHTS_FILE}: module {module}"
    if set(ab) != {"A", "B"}:
        raise MergecoreError(f"{where} has lora_{'A' if 'A' in ab else 'B'} only; re-export the adapter")
    A, B = ab["A"].float(), ab["B"].float()
    if A.ndim != 2 or B.ndim != 2:
        raise MergecoreError(f"{where} has {A.ndim}-D factors (a convolution in target_modules); only Linear "
                             "layers can be merged, retrain targeting Linear modules only")
    if A.shape[0] == 0 or B.shape[1] == 0:
        raise MergecoreError(f"{where} has rank 0; drop this module or retrain with r >= 1")
    if A.shape[0] != B.shape[1]:
        raise MergecoreError(f"{where}: lora_A has rank {A.shape[0]} but lora_B {B.shape[1]}; "
                             "the file is inconsistent, re-export the adapter")
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
        raise MergecoreError(f"{where} holds NaN or Inf weights; retrain or re-export the adapter")
    r, alpha = module_rank_alpha(config, module, str(folder / CONFIG_FILE))
    if r != A.shape[0]:
        raise MergecoreError(f"{where} has rank {A.shape[0]} but adapter_config.json gives r={r} (r / rank_pattern), "
                             "so PEFT would not load it either; re-save the adapter with PEFT")
    return LoraFactors(A=A.contiguous(), B=B.contiguous(), scale=scaling(config, alpha, A.shape[0]))
