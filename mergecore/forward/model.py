"""MergeModel: a frozen base model whose targeted Linear layers carry all K adapters at once.

Every targeted ``nn.Linear`` is wrapped once by ``MultiLoraLinear``, computing

    y = W0 x + B_cat diag(c) A_cat x            (factored: two thin GEMMs, no dense delta)

where ``A_cat`` (R, in) stacks the adapters' A factors, ``B_cat`` (out, R) their scaled B
factors (s_k B_k), and ``c`` (R,) expands the merge coefficients over each adapter's rank
directions. Where the coefficients come from is a *coefficient source* (see ``coefs.py``):
task-wise, layer-wise, per-block, per-row routing (row i uses expert k only), or spectral.
Swapping the source never touches the weights, so experts, uniform and learned merges are all
one model.

Classification heads (PEFT ``modules_to_save``) differ per task: ``RoutedHead`` holds each
task's head and applies head k to the rows of task k, so all tasks share one encoder forward.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mergecore.adapters import AdapterSet
from mergecore.core_space import stack_factors
from mergecore.errors import MergecoreError
from mergecore.forward.devices import layer_device, main_device


@dataclass
class Segments:
    """Rows [start, end) of a batch belong to task ``task`` (blocks are contiguous)."""

    spans: list[tuple[int, int, int]]  # (task, start, end)

    @property
    def num_rows(self) -> int:
        return self.spans[-1][2] if self.spans else 0

    def task_of_rows(self, device=None) -> torch.Tensor:
        ids = [t for t, s, e in self.spans for _ in range(e - s)]
        return torch.tensor(ids, dtype=torch.long, device=device)


class Slot(threading.local):
    """Per-forward state shared by all wrapped layers (not part of the module tree).

    Thread-local: two threads (two app sessions) can run the same frozen model with different
    coefficient sources at once without seeing each other's state.
    """

    def __init__(self):
        self.source = None  # a CoefficientSource
        self.segments: Segments | None = None


class MultiLoraLinear(nn.Module):
    """W0 x + (coefficient-weighted) sum of K LoRA terms, with the K factors concatenated."""

    def __init__(self, base: nn.Linear, index: int, name: str, A_cat: torch.Tensor,
                 B_cat: torch.Tensor, owner: torch.Tensor, slot: Slot, num_adapters: int):
        super().__init__()
        self.base = base
        self.index, self.name, self.slot = index, name, slot
        self.register_buffer("A_cat", A_cat.float().contiguous(), persistent=False)  # (R, in)
        self.register_buffer("B_cat", B_cat.float().contiguous(), persistent=False)  # (out, R)
        self.register_buffer("owner", owner, persistent=False)  # (R,) adapter of each direction
        # (K, R) one-hot: c (K,) -> c_r = c @ expand (R,); a matmul, cheaper to differentiate than a gather
        self.register_buffer("expand", F.one_hot(owner, num_adapters).T.float(), persistent=False)

    # The model code around a wrapped layer reads it like the layer it wraps (T5 reads ``wo.weight.dtype``).
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.A_cat.shape[1]

    @property
    def out_features(self) -> int:
        return self.B_cat.shape[0]

    def factored(self, x: torch.Tensor, c_r: torch.Tensor) -> torch.Tensor:
        """B_cat diag(c_r) A_cat x; c_r is (R,) or per-row (N, R)."""
        h = F.linear(x, self.A_cat)  # (N, ..., R)
        if c_r.ndim == 2:  # per-row coefficients
            c_r = c_r.view(c_r.shape[0], *([1] * (h.ndim - 2)), c_r.shape[1])
        hc = h.float() * c_r.float().to(h.device)  # coefficients stay float32 under autocast
        return F.linear(hc.to(h.dtype), self.B_cat)  # (N, ..., out)

    def expand_coefs(self, c: torch.Tensor) -> torch.Tensor:
        """Per-adapter coefficients (K,) or (N, K) -> per rank direction (R,) or (N, R), on this layer's device,
        in float32 (autocast would run this matmul in bf16 and round the coefficients)."""
        c = c.to(self.expand.device)
        if torch.is_autocast_enabled(c.device.type):
            with torch.autocast(c.device.type, enabled=False):
                return c.float() @ self.expand
        return c @ self.expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        source = self.slot.source
        if source is None:
            return y
        # the LoRA path runs in float32 whatever the base's dtype, and the sum is rounded once, as PEFT does (it
        # keeps adapter weights float32); under autocast F.linear still computes in the autocast dtype
        return (y + source.lora_term(self, x.to(self.A_cat.dtype))).to(y.dtype)


class RoutedHead(nn.Module):
    """One head per task; rows of task k go through head k; outputs padded to the widest head."""

    def __init__(self, heads: list[nn.Module], num_labels: list[int], slot: Slot):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.num_labels, self.slot = num_labels, slot

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        width = max(self.num_labels)
        outs = []
        for task, start, end in self.slot.segments.spans:
            head = self.heads[task]
            weight = next(head.parameters(), None)  # the head's dtype (a bf16 base's hidden states may differ)
            rows = x[start:end] if weight is None else x[start:end].to(weight.dtype)
            logits = head(rows, *args, **kwargs)
            outs.append(F.pad(logits, (0, width - logits.shape[-1])))
        return torch.cat(outs, dim=0)


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


QUANTIZED = ("Linear4bit", "Linear8bitLt")  # bitsandbytes layers (nn.Linear subclasses with packed weights)


def linear_shape(base: nn.Module, name: str) -> tuple[int, int]:
    """(out, in) of a Linear, or of a GPT-2 style Conv1D (weight stored (in, out), y = x W + b).

    LoRA factors act the same on both (x A^T B^T); only the base weight layout differs."""
    if type(base).__name__ in QUANTIZED:  # bitsandbytes: the weight is packed, the layer knows its shape
        return base.out_features, base.in_features
    if isinstance(base, nn.Linear):
        return tuple(base.weight.shape)
    if type(base).__name__ == "Conv1D" and getattr(base, "weight", None) is not None and base.weight.ndim == 2:
        return tuple(base.weight.shape[::-1])
    raise MergecoreError(f"module {name} is a {type(base).__name__}; only Linear (or GPT-2 Conv1D) layers can carry LoRA")


def wrap_linears(model: nn.Module, adapters: AdapterSet, slot: Slot) -> list[MultiLoraLinear]:
    """Replace every targeted Linear by a MultiLoraLinear; returns them in model order."""
    layers = []
    for index, name in enumerate(adapters.modules):
        try:
            base = model.get_submodule(name)
        except AttributeError:
            raise MergecoreError(
                f"adapter module {name} does not exist in the base model; check the base model"
            ) from None
        if isinstance(base, MultiLoraLinear):
            base = base.base
        out_f, in_f = adapters.shape(name)
        base_shape = linear_shape(base, name)
        if base_shape != (out_f, in_f):
            raise MergecoreError(
                f"module {name}: adapter delta is {out_f}x{in_f} but the base layer is "
                f"{base_shape[0]}x{base_shape[1]}; wrong base model"
            )
        B_cat, A_cat, owner = stack_factors(adapters.factors(name), dtype=torch.float32)
        where = layer_device(model, name, base)  # the factors live where the base layer computes
        layer = MultiLoraLinear(base, index, name, A_cat.to(where), B_cat.to(where), owner.to(where), slot,
                                len(adapters))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)  # "" is the model itself
        layers.append(layer)
    return layers


def build_head(template: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``template`` carrying ``params`` (shapes may differ, e.g. num_labels)."""
    head = copy.deepcopy(template)
    like = next(template.parameters())  # the head keeps the base's dtype and device
    for pname, value in params.items():
        owner_name, _, leaf = pname.rpartition(".")
        owner = head.get_submodule(owner_name)  # "" is the head itself
        setattr(owner, leaf, nn.Parameter(value.detach().to(like.device, like.dtype, copy=True), requires_grad=False))
    if isinstance(head, nn.Linear):
        head.out_features, head.in_features = head.weight.shape
    return head


def route_heads(model: nn.Module, adapters: AdapterSet, slot: Slot) -> list[int]:
    """Replace the base model's head module(s) by RoutedHeads built from each adapter's extra modules.

    Returns each task's number of labels: the output width of the head the logits come from, the one
    registered last in the model (``classifier`` after ``bert.pooler`` when both are modules_to_save)."""
    wanted = {h for a in adapters.adapters for h in a.head_modules}
    head_names = [name for name, _ in model.named_modules() if name in wanted]  # model order
    missing = sorted(wanted - set(head_names))
    if missing:
        raise MergecoreError(f"adapter head {missing[0]} (modules_to_save) does not exist in the base model; "
                             "check the base model")
    num_labels: list[int] = []
    for hname in head_names:
        template = model.get_submodule(hname)
        heads = []
        for a in adapters.adapters:
            params = {k[len(hname) + 1:]: v for k, v in a.extra.items() if k.startswith(hname + ".")}
            if not params:
                raise MergecoreError(
                    f"adapter {a.name} has no saved head {hname!r} (modules_to_save); every task needs its own head"
                )
            heads.append(build_head(template, params))
        out_dims = [_out_dim(h) for h in heads]
        num_labels = out_dims  # the last head in model order gives the logits
        parent_name, _, child = hname.rpartition(".")
        setattr(model.get_submodule(parent_name), child, RoutedHead(heads, out_dims, slot))
    return num_labels


def _out_dim(head: nn.Module) -> int:
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    return last.weight.shape[0]


def _refuse_heads(adapters: AdapterSet) -> None:
    """A language model reads no per-task head: saved modules_to_save copies would be silently dropped."""
    for a in adapters.adapters:
        if a.head_modules:
            raise MergecoreError(f"adapter {a.name} saved modules_to_save {a.head_modules} (whole trained modules) "
                                 "on a seq2seq/causal model; mergecore merges LoRA factors only there, retrain "
                                 "without modules_to_save")


class MergeModel(nn.Module):
    """Base model + K adapters in factored form; the coefficient source decides the merge."""

    def __init__(self, base: nn.Module, adapters: AdapterSet, with_heads: bool = True):
        super().__init__()
        _freeze(base)
        base.eval()
        self.slot = Slot()
        self.adapters = adapters
        self.model = base
        self.layers = wrap_linears(base, adapters, self.slot)
        if not with_heads:
            _refuse_heads(adapters)
        self.num_labels = route_heads(base, adapters, self.slot) if with_heads else []

    @property
    def num_tasks(self) -> int:
        return len(self.adapters)

    @property
    def device(self) -> torch.device:
        return main_device(self.model)

    def set_source(self, source) -> None:
        self.slot.source = source

    def forward(self, segments: Segments, **inputs):
        self.slot.segments = segments
        return self.model(**inputs)
