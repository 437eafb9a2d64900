"""LoRA-DV spectral rethinking (lora-dv.txt section 4): a learned gain per singular value.

For each module's merged delta (the difference vector of the starting merge) take its thin SVD
``dW = U diag(sigma) V^T`` — through the factors' QR (core space) when the merge is factored,
never a dense SVD then — freeze U and V, and learn ``Lambda`` (init ones) so that

    dW~ = U diag(Lambda * sigma) V^T                         (LoRA-DV Eq. 8 / 11)

The forward is factored: ``x -> (x V) * (Lambda * sigma) -> U``. Iterative rethinking (Eq. 9-13)
re-decomposes the rethought delta and learns a fresh Lambda, T times (default 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mergecore.merges.base import ModuleMerge, thin_svd


class SpectralCoefs(nn.Module):
    """Coefficient source: frozen singular vectors of each module's merged delta, learned gains."""

    kind = "spectral"

    def __init__(self, merge: dict[str, ModuleMerge], modules: list[str], device=None):
        super().__init__()
        self.modules_, self.U, self.S, self.Vt, offsets = list(modules), {}, {}, {}, [0]
        for name in self.modules_:
            U, S, Vt = thin_svd(merge[name])
            self.U[name], self.S[name], self.Vt[name] = (t.float().to(device) for t in (U, S, Vt))
            offsets.append(offsets[-1] + len(S))
        self.offsets = offsets
        self.gamma = nn.Parameter(torch.ones(offsets[-1], device=device))  # all Lambda_l, concatenated

    def scales(self, l: int) -> torch.Tensor:
        return self.gamma[self.offsets[l]:self.offsets[l + 1]]

    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor:
        name, l = layer.name, layer.index
        if name not in self.U:
            return torch.zeros(*x.shape[:-1], layer.B_cat.shape[0], dtype=x.dtype, device=x.device)
        h = F.linear(x, self.Vt[name]) * (self.scales(l) * self.S[name])  # (N, ..., r)
        return F.linear(h, self.U[name])

    def effective(self) -> torch.Tensor:
        """Mean gain per module (L, 1): what the live charts plot."""
        return torch.stack([self.scales(l).mean() for l in range(len(self.modules_))]).unsqueeze(1)

    def to_merge(self) -> dict[str, ModuleMerge]:
        """The rethought delta per module, factored: B = U diag(Lambda sigma), A = V^T."""
        out = {}
        for l, name in enumerate(self.modules_):
            g = self.scales(l).detach() * self.S[name]
            out[name] = ModuleMerge("core", B=(self.U[name] * g).cpu(), A=self.Vt[name].cpu())
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """Learned gains and starting singular values per module (for analysis)."""
        out = {}
        for l, name in enumerate(self.modules_):
            out[f"scale::{name}"] = self.scales(l).detach().cpu()
            out[f"sigma::{name}"] = self.S[name].cpu()
        return out
