"""Shared pieces of the bench scripts: a random Llama-style base model, K in-memory LoRA
adapters on q,k,v,o, the MergeModel around it, a materialising reference learner, and timing /
peak-memory helpers. Not part of mergecore: benches only (see docs/perf.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mergecore.adapters import Adapter, AdapterSet, LoraFactors  # noqa: E402
from mergecore.forward.model import MergeModel, Segments  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Shape:
    """A Llama-style model shape plus the batch it runs."""

    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    seq: int


PRESETS = {
    # Llama-3.2-1B shape: 1.24e9 parameters (262M of them the embedding).
    "1b": Shape(2048, 8192, 16, 32, 8, 128256, 8, 512),
    # shrunk for a 2-core CPU: BERT-base width (d=768, as flan-t5-base), 2 blocks, GQA, SwiGLU; ~25M parameters.
    "cpu": Shape(768, 3072, 2, 12, 4, 8192, 4, 64),
    # MiniLM-like width/depth (the demo's shape): launch-overhead regime on a GPU.
    "small": Shape(384, 1536, 6, 12, 12, 30522, 40, 64),
    # seconds-long smoke runs (tests/test_bench_smoke.py).
    "smoke": Shape(64, 128, 2, 4, 2, 256, 2, 16),
}


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="model + batch shape (default: 1b on cuda, cpu on cpu, smoke with --smoke)")
    for name in ("hidden", "inter", "layers", "heads", "kv_heads", "vocab", "batch", "seq"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"override the preset's {name}")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (e.g. 2 to mimic the 2-core CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat: checks the script runs")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    p.add_argument("--out", default=None, help="also write the JSON to this file (e.g. docs/perf/x.json)")


def shape_from_args(args) -> Shape:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    preset = args.preset or ("smoke" if args.smoke else ("1b" if args.device == "cuda" else "cpu"))
    base = asdict(PRESETS[preset])
    for k in base:
        v = getattr(args, k, None)
        if v is not None:
            base[k] = v
    return Shape(**base)


def reps(args, warmup: int, repeats: int) -> tuple[int, int]:
    if args.smoke:
        return 1, 1
    return (args.warmup if args.warmup is not None else warmup, args.repeats if args.repeats is not None else repeats)


def build_base(shape: Shape, device: torch.device, seed: int = 0) -> nn.Module:
    """Randomly initialised LlamaModel (no LM head), float32, eval mode, frozen."""
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.inter, num_hidden_layers=shape.layers,
                      num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                      vocab_size=shape.vocab, max_position_embeddings=max(2048, shape.seq))
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False  # training-style forward: no KV cache objects
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaModel(cfg)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _linear(m: nn.Module):
    """The nn.Linear of a module, also when a MergeModel already wrapped it (MultiLoraLinear.base)."""
    return m if isinstance(m, nn.Linear) else (m.base if isinstance(getattr(m, "base", None), nn.Linear) else None)


def target_modules(base: nn.Module) -> list[str]:
    return [n for n, m in base.named_modules() if _linear(m) is not None and n.rsplit(".", 1)[-1] in TARGETS]


def make_adapters(base: nn.Module, K: int, rank: int, device, seed: int = 0) -> AdapterSet:
    """K random rank-``rank`` LoRA adapters on q,k,v,o (alpha = 2 rank, so scale 2), in memory."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    config = {"base_model_name_or_path": "bench", "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank}
    mods = {n: _linear(base.get_submodule(n)).weight.shape for n in target_modules(base)}
    adapters = []
    for k in range(K):
        factors = {}
        for name, (out_f, in_f) in mods.items():
            A = torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)
            B = torch.randn(out_f, rank, generator=gen) * 0.02
            factors[name] = LoraFactors(A.to(device), B.to(device), 2.0)
        adapters.append(Adapter(f"task{k}", "bench", config, factors, {}))
    return AdapterSet(tuple(adapters))


@contextlib.contextmanager
def unwrapped(mm: MergeModel):
    """Temporarily put the original nn.Linear layers back (the floor / reference run on the plain base)."""
    def swap(to_base: bool):
        for layer in mm.layers:
            parent_name, _, child = layer.name.rpartition(".")
            parent = mm.model.get_submodule(parent_name) if parent_name else mm.model
            setattr(parent, child, layer.base if to_base else layer)
    swap(True)
    try:
        yield mm.model
    finally:
        swap(False)


_PROJ: dict = {}


def hidden_loss(out) -> torch.Tensor:
    """A scalar of the last hidden state, float32 (stands in for the objective on label logits):
    mean square of 8 fixed random projections. (Not mean(h^2): after the final RMSNorm that is ~1
    whatever the coefficients, so its gradient would be round-off noise.)"""
    h = out.last_hidden_state
    key = (h.shape[-1], h.device)
    if key not in _PROJ:
        g = torch.Generator().manual_seed(1234)
        _PROJ[key] = (torch.randn(h.shape[-1], 8, generator=g) / h.shape[-1] ** 0.5).to(h.device)
    return (h.float() @ _PROJ[key]).pow(2).mean()


class FastMatrixCoefs(nn.Module):
    """Bench prototype of an engine change to ``MatrixCoefs.lora_term``: the group row is read with
    a Python int (a view, no tensor-indexed gather) and the (K,) -> (R,) expansion over rank
    directions is a matmul with a fixed (K, R) one-hot matrix instead of ``c[layer.owner]`` (whose
    backward is an index_put with accumulate). Same maths, same gradients."""

    def __init__(self, init: torch.Tensor, group: list[int], layers):
        super().__init__()
        self.gamma = nn.Parameter(init.detach().clone().float())
        self.group = list(group)
        K = init.shape[-1]
        self.expand = {l.index: torch.nn.functional.one_hot(l.owner, K).T.float().contiguous() for l in layers}

    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor:
        c = self.gamma[self.group[layer.index]]  # (K,)
        return layer.factored(x, c @ self.expand[layer.index])


class MaterializedLearner(nn.Module):
    """Reference: merged weights W0 + sum_k gamma_k s_k B_k A_k for every targeted module, built every
    step and run with ``torch.func.functional_call`` (how public AdaMerging-style code does it).

    mode "factors": W0 + (B_cat * c) @ A_cat from the factors; mode "dense": AdaMerging's layout, the
    dense task vectors s_k B_k A_k stored once (K x out x in per module) and W0 + einsum(c, D).
    """

    def __init__(self, base: nn.Module, adapters: AdapterSet, granularity: str, mode: str = "factors"):
        super().__init__()
        self.base, self.mode = base, mode
        self.names = adapters.modules
        K, L = len(adapters), len(self.names)
        G = 1 if granularity == "task" else L
        self.gamma = nn.Parameter(torch.full((G, K), 1.0 / K, device=next(base.parameters()).device))
        self.group = [0] * L if G == 1 else list(range(L))
        self.store = []
        for name in self.names:
            fs = adapters.factors(name)
            B_cat = torch.cat([f.scale * f.B for f in fs], 1)  # (out, R)
            A_cat = torch.cat([f.A for f in fs], 0)  # (R, in)
            owner = torch.cat([torch.full((f.rank,), k, device=A_cat.device) for k, f in enumerate(fs)])
            if mode == "dense":
                dense = torch.stack([f.scale * f.B @ f.A for f in fs])  # (K, out, in)
                self.store.append((dense,))
            else:
                self.store.append((B_cat, A_cat, owner))

    def merged_params(self) -> dict[str, torch.Tensor]:
        params = {}
        for l, name in enumerate(self.names):
            W0 = self.base.get_submodule(name).weight
            c = self.gamma[self.group[l]]  # (K,)
            if self.mode == "dense":
                delta = torch.einsum("k,koi->oi", c, self.store[l][0])
            else:
                B_cat, A_cat, owner = self.store[l]
                delta = (B_cat * c[owner]) @ A_cat
            params[name + ".weight"] = W0 + delta.to(W0.dtype)
        return params

    def forward(self, **inputs):
        return torch.func.functional_call(self.base, self.merged_params(), args=(), kwargs=inputs)



def coef_step(mm, src, seg, ids: torch.Tensor, ctx, on_loss=None):
    """One coefficient-learning step of ``src`` on ``mm`` as a closure: forward, backward to gamma, Adam (lr 1e-3);
    ``on_loss`` gets each step's detached loss."""
    opt = torch.optim.Adam(src.parameters(), lr=1e-3)

    def step():
        mm.set_source(src)
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss = hidden_loss(mm(seg, input_ids=ids))
        loss.backward()
        opt.step()
        if on_loss is not None:
            on_loss(loss.detach())
    return step

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each fn; one call of each per round, rounds interleaved.

    ``fns`` maps name -> fn or (fn, context factory or None); the context (e.g. unwrapping the
    MergeModel for the floor) is entered outside the timed region.
    """
    norm = {k: (v if isinstance(v, tuple) else (v, None)) for k, v in fns.items()}

    def call(k, timed: list | None):
        fn, ctx = norm[k]
        with (ctx() if ctx else contextlib.nullcontext()):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if timed is not None:
                timed.append((time.perf_counter() - t0) * 1e3)

    for _ in range(warmup):
        for k in norm:
            call(k, None)
    times = {k: [] for k in norm}
    for _ in range(repeats):
        for k in norm:
            call(k, times[k])
    return {k: statistics.median(v) for k, v in times.items()}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def emit(args, result: dict) -> None:
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        print(json.dumps(result), flush=True)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def env_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
