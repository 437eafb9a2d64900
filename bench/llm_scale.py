"""Coefficient learning at the papers' LLM sizes: step time and peak CUDA memory vs the floor.

Random weights built from each config on the target device, layer by layer (never downloaded, never
a CPU float32 copy of the model): the model is created on the meta device, then every Linear is
replaced by one whose random weight is drawn on the device in the target dtype (bf16), or quantised
from it to NF4 (bitsandbytes ``Linear4bit``, compute dtype bf16) for the 70B case. Base models have
no LM head (``AutoModel``): the loss is bench/common.py's ``hidden_loss`` of the last hidden state.

Per case, K = 8 random LoRA adapters of rank 16 on q,k,v,o (scale 2, factors float32, as
bench/common.py's ``make_adapters``), one batch of random token ids:
  floor       the plain base: forward + backward to the input embeddings (no adapters resident)
  ours/task   MergeModel forward + backward to the task-wise coefficients + Adam step
  ours/layer  the same with layer-wise coefficients
(a) median ms per step over interleaved rounds; (b) peak CUDA memory of one step after the warm-up
(``torch.cuda.max_memory_allocated`` after a reset: weights, factors, activations, gradients);
ours/floor ratios of both. Precision modes (``--precision``, each measured separately, floor included):
auto = mergecore's default on a bf16 base (no autocast, the LoRA path in float32, TF32 matmuls), bf16 = bf16
autocast (mergecore's ``precision=bf16``).
An OOM is recorded as the result (``--grad-ckpt auto`` then retries the case once with gradient
checkpointing and says so); a failure of one case never stops the others.

Targets (issue 18): 8b: ours peak <= 1.05 x floor peak. 14b: the learner's peak < 80 GiB (one 80 GB
GPU). 70b-nf4: fits one H200 (peak, or the OOM, reported either way).

    python bench/llm_scale.py --cases 8b,14b,70b-nf4 --json --out docs/perf/llm_scale.json   # GPU
    python bench/llm_scale.py --cases 70b-nf4 --batch 70b-nf4=8 --precision bf16 --json   # one case, other batch
    python bench/llm_scale.py --smoke --device cpu --json                                     # < 60 s CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import math
import sys
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from common import MergeModel, Segments, TARGETS, coef_step, emit, hidden_loss, table, time_interleaved, unwrapped
from mergecore.adapters import Adapter, AdapterSet, LoraFactors
from mergecore.errors import MergecoreError
from mergecore.forward.coefs import layer_coefs, task_coefs

GiB = 2**30

# LlamaConfig / Qwen2Config fields of the papers' bases (their published config.json values).
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192)
QWEN25_14B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                  num_key_value_heads=8, vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  max_position_embeddings=32768)
LLAMA3_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                  num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                  max_position_embeddings=8192)
DEFAULT_BATCH, DEFAULT_SEQ = 8, 512


@dataclass(frozen=True)
class Case:
    """One model shape to measure and the issue's target for it."""

    name: str
    title: str
    family: str  # "llama" | "qwen2"
    config: dict
    batch: int
    seq: int
    quant: str | None  # None: bf16 weights; "nf4": bitsandbytes 4-bit
    target: str  # "peak_ratio<=1.05" | "peak<80GiB" | "fits"


CASES = {
    "8b": Case("8b", "Llama-3-8B shape", "llama", LLAMA3_8B, 8, 512, None, "peak_ratio<=1.05"),
    "14b": Case("14b", "Qwen2.5-14B shape", "qwen2", QWEN25_14B, 8, 512, None, "peak<80GiB"),
    # 4 x 512: ~35 GiB NF4 weights + 80 layers of 2048 tokens' activations fit 141 GB without checkpointing
    "70b-nf4": Case("70b-nf4", "Llama-3-70B shape, NF4", "llama", LLAMA3_70B, 4, 512, "nf4", "fits"),
}
TARGET_TEXT = {"peak_ratio<=1.05": "ours peak <= 1.05 x floor peak", "peak<80GiB": "ours peak < 80 GiB (one 80 GB GPU)",
               "fits": "fits one GPU of this size (peak or OOM reported)"}


def tiny(case: Case) -> Case:
    """The smoke version of a case: same family, quantisation and code path, a few thousand parameters."""
    cfg = dict(case.config, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    return replace(case, config=cfg, batch=2, seq=16)


def log(msg: str) -> None:
    print(f"[llm_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_config(case: Case):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[case.family]
    cfg = cls(**case.config, use_cache=False)
    cfg._attn_implementation = "sdpa"
    return cfg


def make_linear(in_f: int, out_f: int, bias: bool, device, dtype, quant: str | None, gen, std: float) -> nn.Linear:
    """A frozen Linear with a random (out, in) weight drawn on ``device`` in ``dtype``; NF4-quantised if asked."""
    w = torch.randn(out_f, in_f, device=device, dtype=dtype, generator=gen) * std  # (out, in)
    b = torch.zeros(out_f, device=device, dtype=dtype) if bias else None
    if quant == "nf4":
        import bitsandbytes as bnb

        lin = bnb.nn.Linear4bit(in_f, out_f, bias=bias, compute_dtype=dtype, quant_type="nf4", device="meta")
        lin.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", module=lin).to(device)  # packed
    else:
        with torch.device("meta"):
            lin = nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
        lin.weight = nn.Parameter(w, requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b, requires_grad=False)
    return lin


def materialise_rest(model: nn.Module, cfg, device, dtype, gen) -> None:
    """Embeddings (normal(0, std)), norms (ones) and the rotary buffers, on ``device`` (meta before)."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            continue
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            if isinstance(mod, nn.Embedding):
                t = torch.randn(p.shape, device=device, dtype=dtype, generator=gen) * cfg.initializer_range
            else:
                t = torch.ones(p.shape, device=device, dtype=dtype)
            setattr(mod, pname, nn.Parameter(t, requires_grad=False))
    with torch.device(device):  # rotary inv_freq is computed from the config, in float32
        model.rotary_emb = type(model.rotary_emb)(config=cfg)


def build_model(case: Case, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """The base model (AutoModel, no LM head) with random weights, built one decoder layer at a time."""
    from transformers import AutoModel

    cfg = make_config(case)
    with torch.device("meta"):
        model = AutoModel.from_config(cfg, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    materialise_rest(model, cfg, device, dtype, gen)
    for i, layer in enumerate(model.layers):
        for name, lin in [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]:
            parent, _, child = name.rpartition(".")
            new = make_linear(lin.in_features, lin.out_features, lin.bias is not None, device, dtype, case.quant,
                              gen, cfg.initializer_range)
            setattr(layer.get_submodule(parent) if parent else layer, child, new)
        if (i + 1) % 10 == 0:
            log(f"  built {i + 1}/{len(model.layers)} layers")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def linear_io(m: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear from its features, not its weight (a bnb Linear4bit weight is packed)."""
    return m.out_features, m.in_features


def random_adapters(model: nn.Module, K: int, rank: int, seed: int) -> AdapterSet:
    """K random rank-``rank`` LoRA adapters on q,k,v,o (alpha = 2 rank: scale 2), factors float32 on the CPU
    (mergecore loads adapters there; MergeModel's stacked copies are moved to the device)."""
    gen = torch.Generator().manual_seed(seed + 1)
    config = {"base_model_name_or_path": "bench", "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank}
    mods = {n: linear_io(m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS}
    adapters = []
    for k in range(K):
        factors = {}
        for name, (out_f, in_f) in mods.items():
            A = torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)  # (r, in)
            B = torch.randn(out_f, rank, generator=gen) * 0.02  # (out, r)
            factors[name] = LoraFactors(A, B, 2.0)
        adapters.append(Adapter(f"task{k}", "bench", config, factors, {}))
    return AdapterSet(tuple(adapters))


def wrap(model: nn.Module, adapters: AdapterSet, device: torch.device) -> MergeModel:
    """MergeModel around ``model``; its factor buffers (stacked on the CPU) moved next to the base weights."""
    mm = MergeModel(model, adapters, with_heads=False)
    for layer in mm.layers:
        for bname, buf in list(layer.named_buffers(recurse=False)):
            setattr(layer, bname, buf.to(device))
    return mm


def unwrap(mm: MergeModel) -> None:
    """Put the original Linears back for good (the next attempt or case starts from the plain base)."""
    for layer in mm.layers:
        parent, _, child = layer.name.rpartition(".")
        setattr(mm.model.get_submodule(parent) if parent else mm.model, child, layer.base)


def factor_bytes(mm: MergeModel) -> int:
    return sum(b.numel() * b.element_size() for layer in mm.layers for b in layer.buffers(recurse=False))


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """transformers gradient checkpointing (non-reentrant: the coefficient gradients flow through it)."""
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # transformers checkpoints only in training mode; dropout is 0 in these configs
    else:
        model.gradient_checkpointing_disable()
        model.eval()


def floor_fn(model: nn.Module, ids: torch.Tensor, ctx, losses: list):
    def floor():
        with ctx():
            emb = model.embed_tokens(ids).detach().requires_grad_(True)  # (B, T, d)
            loss = hidden_loss(model(inputs_embeds=emb))
        loss.backward()
        losses.append(loss.detach())
    return floor


def ours_fns(mm: MergeModel, ids: torch.Tensor, ctx, losses: list) -> dict:
    """"ours/task" and "ours/layer": one learning step each (forward, backward to gamma, Adam)."""
    K, L = len(mm.adapters), len(mm.layers)
    init = torch.full((K,), 1.0 / K)
    seg = Segments([(0, 0, ids.shape[0])])
    fns = {}
    for g, make in (("task", task_coefs), ("layer", layer_coefs)):
        src = make(init, L).to(ids.device)  # gamma (1, K) or (L, K)
        fns[f"ours/{g}"] = coef_step(mm, src, seg, ids, ctx, losses.append)
    return fns


def precision_ctx(mode: str, device: torch.device):
    """Context factory of a precision mode, as mergecore's learner (``learn.learner.precision_context``):
    auto: no autocast (the LoRA path runs float32 on the bf16 base), TF32 matmuls on CUDA;
    bf16: bf16 autocast (coefficient products stay float32); fp32: no autocast, TF32 off."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"
        torch.backends.cudnn.allow_tf32 = mode != "fp32"
    if mode == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def peak_of(fn, device: torch.device, ctx_factory=None) -> int | None:
    """Peak allocated bytes over one call of ``fn`` (everything resident counted); None on a CPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with (ctx_factory() if ctx_factory else contextlib.nullcontext()):
        fn()
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def model_bytes(model: nn.Module) -> int:
    """Bytes of the weights as stored (NF4: packed 4-bit data; quantisation statistics not counted)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def measure(model, adapters, ids, ctx, device, warmup: int, repeats: int) -> dict:
    """One attempt: floor peak before any adapter state exists, then wrap, time interleaved, ours' peaks, unwrap."""
    out: dict = {"ms": {}, "peak_bytes": {}}
    losses: list = []
    floor = floor_fn(model, ids, ctx, losses)
    log("  floor: warm-up and peak")
    floor()
    out["peak_bytes"]["floor"] = peak_of(floor, device)
    try:
        mm = wrap(model, adapters, device)
    except MergecoreError as exc:
        out["status"] = "needs mergecore quantised-layer support" if "base layer is" in str(exc) else "error"
        out["error"] = f"MergecoreError: {exc}"
        return out
    try:
        out["factor_bytes"], out["resident_bytes_with_factors"] = factor_bytes(mm), allocated(device)
        fns = {"floor": (floor, lambda: unwrapped(mm)),
               **{k: (f, None) for k, f in ours_fns(mm, ids, ctx, losses).items()}}
        log(f"  timing {list(fns)}: {warmup} warm-up + {repeats} rounds")
        out["ms"] = time_interleaved(fns, device, warmup, repeats)
        for name in ("ours/task", "ours/layer"):
            log(f"  {name}: peak")
            out["peak_bytes"][name] = peak_of(fns[name][0], device)
    finally:
        mm.set_source(None)
        unwrap(mm)
    out["loss_finite"] = bool(torch.isfinite(torch.stack([x.float() for x in losses])).all())
    out["status"] = "ok"
    return out


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def attempt(model, adapters, ids, mode: str, device, args, ckpt: bool) -> dict:
    """``measure`` in one precision mode with gradient checkpointing on or off; an OOM (or any error) is the result."""
    if ckpt:
        set_checkpointing(model, True)
    warmup, repeats = (1, 1) if args.smoke else (args.warmup, args.repeats)
    try:
        res = measure(model, adapters, ids, precision_ctx(mode, device), device, warmup, repeats)
    except Exception as exc:  # noqa: BLE001  (recorded; the next mode and case still run)
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        res = {"status": "oom" if is_oom(exc) else "error", "error": f"{type(exc).__name__}: {first}"}
    finally:
        if ckpt:
            set_checkpointing(model, False)
    free(device)
    res["grad_ckpt"] = ckpt
    return res


def summarise(res: dict, case: Case, device: torch.device) -> None:
    """ours/floor ratios of one mode's result and the case's target verdict (None when not measured)."""
    ms, peak = res.get("ms", {}), res.get("peak_bytes", {})
    if "floor" in ms:
        res["time_ratio"] = {k.split("/")[1]: v / ms["floor"] for k, v in ms.items() if k.startswith("ours/")}
    if peak.get("floor"):
        res["peak_ratio"] = {k.split("/")[1]: v / peak["floor"] for k, v in peak.items() if k.startswith("ours/")}
        res["peak_GiB"] = {k: v / GiB for k, v in peak.items() if v is not None}
    ours = [v for k, v in peak.items() if k.startswith("ours/") and v is not None]
    met = None
    if device.type == "cuda" and res.get("status") == "ok" and ours:
        if case.target == "peak_ratio<=1.05":
            met = max(res["peak_ratio"].values()) <= 1.05
        elif case.target == "peak<80GiB":
            met = max(ours) < 80 * GiB
        else:
            met = True
    elif case.target == "fits" and res.get("status") == "oom":
        met = False
    res["target_met"] = met


def skip_reason(case: Case, device: torch.device, args) -> str | None:
    if case.quant != "nf4":
        return None
    try:
        importlib.import_module("bitsandbytes")
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken native library)
        return f"skipped: bitsandbytes not importable ({type(exc).__name__}); pip install bitsandbytes"
    if device.type != "cuda" and not args.allow_cpu_nf4:
        return "skipped: NF4 is measured on CUDA only (no CUDA device here)"
    return None


def case_header(case: Case, args, dtype: torch.dtype) -> dict:
    res = {"case": case.name, "title": case.title, "config": case.config, "batch": case.batch, "seq": case.seq,
           "tokens": case.batch * case.seq, "dtype": str(dtype).replace("torch.", ""), "quant": case.quant,
           "K": args.k, "rank": args.rank, "target": TARGET_TEXT[case.target], "modes": {}}
    if case.batch * case.seq < DEFAULT_BATCH * DEFAULT_SEQ and not args.smoke:
        res["batch_note"] = f"smaller batch than {DEFAULT_BATCH} x {DEFAULT_SEQ}: {case.batch} x {case.seq}"
    return res


def run_mode(case: Case, model, adapters, ids, mode: str, device, args) -> dict:
    """One precision mode of a case, retried once with gradient checkpointing after an OOM (--grad-ckpt auto)."""
    out = attempt(model, adapters, ids, mode, device, args, args.grad_ckpt == "on")
    if out["status"] == "oom" and args.grad_ckpt == "auto":
        log(f"{case.name}/{mode}: OOM without gradient checkpointing ({out['error'][:120]}); retrying with it")
        first = out
        out = attempt(model, adapters, ids, mode, device, args, True)
        out.update(grad_ckpt_reason="OOM without it", without_grad_ckpt=first)
    summarise(out, case, device)
    return out


def run_case(case: Case, args, device: torch.device, dtype: torch.dtype) -> dict:
    res = case_header(case, args, dtype)
    reason = skip_reason(case, device, args)
    if reason:
        res.update(status="skipped", reason=reason)
        return res
    t0 = time.perf_counter()
    log(f"{case.name}: building {case.title} on {device} ({res['dtype']}, quant={case.quant})")
    try:
        model = build_model(case, device, dtype, args.seed)
    except Exception as exc:  # noqa: BLE001
        free(device)
        res.update(status="oom" if is_oom(exc) else "error", error=f"build: {type(exc).__name__}: {str(exc)[:300]}")
        return res
    free(device)
    res["build_s"], res["weights_bytes"] = time.perf_counter() - t0, model_bytes(model)
    res["allocated_after_build_bytes"] = allocated(device)
    adapters = random_adapters(model, args.k, args.rank, args.seed)
    res["modules"] = len(adapters.modules)
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, case.config["vocab_size"], (case.batch, case.seq), generator=gen).to(device)  # (B, T)
    for mode in args.precision.split(","):
        log(f"{case.name}: precision {mode}")
        res["modes"][mode] = run_mode(case, model, adapters, ids, mode, device, args)
    statuses = {m["status"] for m in res["modes"].values()}
    res["status"] = statuses.pop() if len(statuses) == 1 else "mixed"
    res["seconds"] = time.perf_counter() - t0
    del model, adapters, ids
    free(device)
    log(f"{case.name}: {res['status']} in {res['seconds']:.0f} s")
    return res


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="8b,14b,70b-nf4", help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="weight dtype")
    p.add_argument("--precision", default="auto,bf16",
                   help="comma list of auto (mergecore's default: no autocast, LoRA path float32, TF32), bf16 "
                        "(autocast), fp32 (TF32 off)")
    p.add_argument("--k", type=int, default=8, help="number of adapters")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", default=None, help="override the batch of every case, or CASE=N,CASE=N")
    p.add_argument("--seq", type=int, default=None, help="override the sequence length of every case")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grad-ckpt", choices=("auto", "on", "off"), default="auto",
                   help="auto: only after an OOM without it (and said so in the output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny configs of every case, one round (CPU, < 60 s)")
    p.add_argument("--allow-cpu-nf4", action="store_true", help=argparse.SUPPRESS)  # exercise the NF4 path on a CPU
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    return p.parse_args(argv)


def select_cases(args) -> list[Case]:
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    cases = [tiny(CASES[n]) if args.smoke else CASES[n] for n in names]
    batches = {}
    if args.batch:
        for item in args.batch.split(","):
            name, _, n = item.rpartition("=")
            batches[name or "*"] = int(n)
    return [replace(c, batch=batches.get(c.name, batches.get("*", c.batch)), seq=args.seq or c.seq) for c in cases]


def env(device: torch.device) -> dict:
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_total_GiB=props.total_memory / GiB)
    try:
        from importlib.metadata import version

        info["bitsandbytes"] = version("bitsandbytes")
    except Exception:  # noqa: BLE001
        info["bitsandbytes"] = None
    return info


def table_rows(r: dict) -> list[list]:
    rows = []
    for mode, m in r["modes"].items():
        ms, pk = m.get("ms", {}), m.get("peak_GiB", {})
        for name in ("floor", "ours/task", "ours/layer"):
            g = name.split("/")[-1]
            rt = (1.0 if ms else "") if name == "floor" else m.get("time_ratio", {}).get(g, "")
            rm = (1.0 if pk else "") if name == "floor" else m.get("peak_ratio", {}).get(g, "")
            rows.append([r["case"], mode, f"{r['batch']}x{r['seq']}", name, ms.get(name, ""), rt, pk.get(name, ""), rm,
                         (m["status"] + (" +ckpt" if m.get("grad_ckpt") else "")) if name == "floor" else ""])
    if not r["modes"]:
        rows.append([r["case"], "", f"{r['batch']}x{r['seq']}", "", "", "", "", "", r["status"]])
    return rows


def verdicts(r: dict) -> str:
    words = {True: "met", False: "NOT met", None: "not measured"}
    per_mode = ", ".join(f"{mode}: {words[m.get('target_met')]}" for mode, m in r["modes"].items()) or "not measured"
    notes = [r.get(k) for k in ("reason", "error", "batch_note") if r.get(k)]
    notes += [f"{mode}: {m[k]}" for mode, m in r["modes"].items() for k in ("error", "grad_ckpt_reason") if m.get(k)]
    return f"{r['case']}: target {r['target']}: {per_mode}" + ("; " + "; ".join(notes) if notes else "")


def print_table(result: dict) -> None:
    rows = [row for r in result["cases"] for row in table_rows(r)]
    print(f"llm_scale  device={result['device']}  K={result['K']}  rank={result['rank']}  dtype={result['dtype']}"
          + ("  (SMOKE: tiny configs, not results)" if result["smoke"] else ""))
    print(table(rows, ["case", "precision", "batch", "learner", "ms/step", "x floor", "peak GiB", "x floor peak",
                       "status"]))
    for r in result["cases"]:
        print(verdicts(r))


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cases = select_cases(args)
    result = {"bench": "llm_scale", **env(device), "smoke": args.smoke, "K": args.k, "rank": args.rank,
              "dtype": args.dtype, "precision": args.precision, "grad_ckpt": args.grad_ckpt, "warmup": args.warmup, "repeats": args.repeats,
              "cases": []}
    for case in cases:
        result["cases"].append(run_case(case, args, device, dtype))
        if args.out:  # partial results survive a later timeout
            emit(argparse.Namespace(out=args.out, json=False), result)
    print_table(result)
    emit(args, result)
    return result


if __name__ == "__main__":
    main()
