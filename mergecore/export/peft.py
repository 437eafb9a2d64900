"""The PEFT adapter format: the merged update as LoRA factors (exact, or compressed by a truncated SVD of the
thin core), PEFT's key layout and adapter_config.json, the task heads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mergecore.adapters import AdapterSet
from mergecore.analysis.spectra import energy_at_rank
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportInputs
from mergecore.files import safe_name, save_tensors
from mergecore.forward.workbench import Workbench
from mergecore.merged import Merge
from mergecore.merges.base import ModuleMerge, thin_svd

PREFIX = "base_model.model."


CARD_FILE, README_FILE, HEADS_DIR = "merge_card.json", "README.md", "heads"


def exact_factors(merge: Merge) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(B, A) per module as stored (float32); refuses dense merges."""
    dense = [name for name, m in merge.items() if not m.is_factored]
    if dense:
        raise MergecoreError(f"this run is dense ({len(dense)} modules, e.g. TIES/DARE): it has no exact LoRA form; "
                             "export it compressed (--rank r) or as full weights (--full-weights)")
    return {name: (m.B.float().cpu().contiguous(), m.A.float().cpu().contiguous()) for name, m in merge.items()}


def truncate(m: ModuleMerge, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-r factors of one module's delta: (B (out, r), A (r, in), all singular values).

    Factored: thin QR of B and A^T, SVD of the small core R_B R_A^T (float64). Dense: SVD of the delta.
    """
    left, S, right = (x.cpu() for x in thin_svd(m, drop_zero=False))
    r = min(rank, S.shape[0])
    return (left[:, :r] * S[:r]).float().contiguous(), right[:r].float().contiguous(), S


def compress(merge: Merge, rank: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Rank-r factors of every module and the energy report (per module and overall)."""
    factors, per_module, kept, total = {}, {}, 0.0, 0.0
    for name, m in merge.items():
        B, A, S = truncate(m, rank)
        factors[name] = (B, A)
        per_module[name] = energy_at_rank(S, rank)
        sq = float((S.double() ** 2).sum())
        kept, total = kept + per_module[name] * sq, total + sq
    return factors, {"per_module": per_module, "overall": kept / total if total > 0 else 1.0,
                     "min": min(per_module.values())}


def factors_to_merge(factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Merge:
    return {name: ModuleMerge("lora-factors", B=B, A=A) for name, (B, A) in factors.items()}


def head_files(task_names: list[str]) -> dict[str, str]:
    """Task -> relative file ``heads/<safe name>.safetensors``; refuses names that collide once sanitised."""
    files = {t: f"{HEADS_DIR}/{safe_name(t)}.safetensors" for t in task_names}
    if len(set(files.values())) != len(files):
        raise MergecoreError(f"task names {task_names} collide once made file-name safe; rename the tasks")
    return files


def task_heads(bench: Workbench | ExportInputs) -> dict[str, dict[str, torch.Tensor]]:
    """Task -> its adapter's saved head tensors (``classifier.weight`` ...); task k pairs with adapter k."""
    return {t: {k: v.float().cpu().contiguous() for k, v in a.extra.items()}
            for t, a in zip(bench.tasks.names, bench.adapters.adapters)}


def head_modules(bench: Workbench | ExportInputs) -> list[str]:
    return sorted({h for a in bench.adapters.adapters for h in a.head_modules})


def pick_head(bench: Workbench | ExportInputs, head: str) -> str:
    names = bench.tasks.names
    if not head:
        return names[0]
    if head not in names:
        raise MergecoreError(f"unknown head task {head!r}; choose one of {', '.join(names)}")
    return head


def num_labels(bench: Workbench | ExportInputs) -> dict[str, int]:
    return {t.name: t.num_labels for t in bench.tasks}


STRUCTURAL = ("encoder", "decoder", "layers", "layer", "h", "block", "blocks")  # never a model-class prefix


def class_prefix(modules: list[str], heads: list[str]) -> str:
    """The prefix the task model class puts before the bare model (``bert.``, ``model.``, ``transformer.``).

    It is the first name every LoRA module shares, when it is not a layer container and no head lives
    under it; '' when there is none (T5, or adapters trained on the bare model)."""
    firsts = {m.partition(".")[0] for m in modules}
    if len(firsts) != 1 or any("." not in m for m in modules):
        return ""
    first = firsts.pop()
    if first in STRUCTURAL or first.isdigit() or any(h.partition(".")[0] == first for h in heads):
        return ""
    return first + "."


def adapter_config(base_model: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   heads: list[str], task_type: str | None, fan_in_fan_out: bool = False) -> dict:
    """adapter_config.json, scale 1 everywhere (lora_alpha == r per module through the patterns).

    Targets are named without the task class's prefix (``encoder.layer.0.attention.self.query``), which
    PEFT matches as a suffix on the task class and exactly on the bare model."""
    prefix = class_prefix(list(factors), heads)
    ranks = {name[len(prefix):]: int(A.shape[0]) for name, (_, A) in factors.items()}
    r = max(set(ranks.values()), key=lambda v: (list(ranks.values()).count(v), v))
    pattern = {re.escape(name): rk for name, rk in ranks.items() if rk != r}
    return {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks), "modules_to_save": heads or None, "lora_dropout": 0.0,
        "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": fan_in_fan_out,
        "init_lora_weights": True, "inference_mode": True,
    }


def adapter_tensors(factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    head: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """PEFT's saved key layout: ``base_model.model.<module>.lora_{A,B}.weight`` + head tensors.

    With a class prefix the factors are written twice, under the task class's names and the bare
    model's, so the adapter loads with its weights on both (PEFT ignores the keys a model lacks)."""
    out = {}
    for name, (B, A) in factors.items():
        names = [name] + ([name[len(prefix):]] if prefix and name.startswith(prefix) else [])
        for n in names:
            out[f"{PREFIX}{n}.lora_A.weight"] = A.float().clone().contiguous()
            out[f"{PREFIX}{n}.lora_B.weight"] = B.float().clone().contiguous()
    for key, t in head.items():
        out[PREFIX + key] = t.float().contiguous()
    return out


def write_adapter(folder: Path, adapters: AdapterSet, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  head: dict[str, torch.Tensor], base_model: str) -> dict:
    """Write a plain PEFT adapter (config + safetensors) carrying ``factors`` and one task's ``head``."""
    heads = sorted({h for a in adapters.adapters for h in a.head_modules})
    task_type = adapters.adapters[0].config.get("task_type")
    fan_in = any(bool(a.config.get("fan_in_fan_out")) for a in adapters.adapters)  # GPT-2 Conv1D targets
    config = adapter_config(base_model, factors, heads, task_type, fan_in_fan_out=fan_in)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_tensors(folder / "adapter_model.safetensors",
                 adapter_tensors(factors, head, class_prefix(list(factors), heads)))
    return config
