"""A merged update as data: ``dict[module, ModuleMerge]``, shared by static methods, learned
runs, spectral runs, analysis and export.

    coefs_to_merge(adapters, coefs)   learned (L, K) coefficients -> exact factored merge
                                      (concatenation: B = [c_1 s_1 B_1 ...], A = [A_1; ...])
    MergedSource(merge)               a coefficient source that runs any merge in a MergeModel
                                      (factored: two thin GEMMs; dense: one GEMM, marked dense)
    merge_to_tensors / tensors_to_merge   safetensors round trip for the run store
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mergecore.adapters import AdapterSet
from mergecore.core_space import stack_factors
from mergecore.merges.base import ModuleMerge

Merge = dict[str, ModuleMerge]


def coefs_to_merge(adapters: AdapterSet, coefs: torch.Tensor) -> Merge:
    """Exact factored merge of per-module coefficients (L, K): rank = sum of source ranks."""
    merge = {}
    for l, name in enumerate(adapters.modules):
        B_cat, A_cat, owner = stack_factors(adapters.factors(name), dtype=torch.float32)
        c = coefs[l].float().to(owner.device)[owner]  # (R,)
        merge[name] = ModuleMerge("lora-factors", B=B_cat * c, A=A_cat)
    return merge


class MergedSource:
    """Coefficient source running a fixed merged update (any method) inside a MergeModel."""

    def __init__(self, merge: Merge, device=None):
        self.terms = {}
        for name, m in merge.items():
            if m.is_factored:
                self.terms[name] = (m.B.float().to(device), m.A.float().to(device), None)
            else:
                self.terms[name] = (None, None, m.dense.float().to(device))

    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor:
        B, A, dense = self.terms.get(layer.name, (None, None, None))
        if dense is not None:
            return F.linear(x, dense.to(x.device))
        if B is None:
            return torch.zeros(*x.shape[:-1], layer.B_cat.shape[0], dtype=x.dtype, device=x.device)
        return F.linear(F.linear(x, A.to(x.device)), B.to(x.device))


def merge_to_tensors(merge: Merge) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in merge.items():
        if m.is_factored:
            out[f"B::{name}"], out[f"A::{name}"] = m.B.float().cpu(), m.A.float().cpu()
        else:
            out[f"dense::{name}"] = m.dense.float().cpu()
    return out


def tensors_to_merge(tensors: dict[str, torch.Tensor], space: str = "lora-factors") -> Merge:
    merge = {}
    for key, t in tensors.items():
        kind, _, name = key.partition("::")
        if kind == "dense":
            merge[name] = ModuleMerge("dense", dense=t)
        elif kind == "B":
            merge[name] = ModuleMerge(space, B=t, A=tensors[f"A::{name}"])
    return merge


def is_dense(merge: Merge) -> bool:
    return any(not m.is_factored for m in merge.values())
