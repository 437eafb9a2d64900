"""Ours vs the real peer: FusionBench's layer-wise AdaMerging wrapper, same base, batch, loss and adapters.

Peer: ``fusion_bench.models.wrappers.layer_wise_fusion.LayerWiseMergedModel`` (fusion-bench 0.2.x, the wrapper
its AdaMerging algorithms train). It is given K "fine-tuned" models holding W0 + delta_k on q,k,v,o, with
delta_k = s_k B_k A_k from the same random LoRA factors as ours (the other weights are not task vectors: they
do not require grad, so its constructor drops them), and turns them into dense task vectors tau_k (K x out x in
per module). Its step, as in its AdaMerging loop: ``merge_weights()`` (W0 + sum_k w_kl tau_kl for every
targeted weight), ``functional_call`` of the base with them, backward to ``merge_weight`` (K, L), Adam.
Ours: MergeModel with layer-wise coefficients (L, K), factored (bench/common.py's model and loss).

  (i)  equality: at equal random coefficients in [0, 1] (fp32, TF32 off) the last hidden states (max abs diff)
       and the coefficient gradients (relative diff) agree within --tol
  (ii) per precision: median ms per step (interleaved: floor, ours, peer), peak CUDA memory of one step with
       the other learner's state moved to the CPU (floor: neither), and the extra state each keeps on the
       device: dense task vectors (peer) vs stacked factors (ours); ours/peer ratios.

fusion_bench is imported lazily; without it the script exits 2 (install it into a separate venv).

    python bench/peer_fusionbench.py --preset 1b --device cuda --precision fp32,tf32,bf16 --json --out docs/perf/peer_1b.json
    python bench/peer_fusionbench.py --preset small --device cuda --precision fp32,tf32,bf16 --json --out docs/perf/peer_small.json
    /work/fbvenv/bin/python bench/peer_fusionbench.py --smoke --device cpu --json      # CPU check, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from types import SimpleNamespace

import torch
from torch import nn

from common import (MergeModel, Segments, add_common_args, build_base, emit, env_info, hidden_loss, make_adapters,
                    reps, shape_from_args, table, time_interleaved, unwrapped)
from mergecore.forward.coefs import layer_coefs

INSTALL = ("fusion_bench is not importable: pip install fusion-bench into a separate venv "
           "(python3 -m venv VENV --system-site-packages && VENV/bin/pip install fusion-bench) and run this "
           "script with VENV/bin/python")


def import_peer():
    """FusionBench's LayerWiseMergedModel and its version; exit 2 with one line when fusion_bench is missing."""
    try:
        from fusion_bench.models.wrappers.layer_wise_fusion import LayerWiseMergedModel
    except ImportError as exc:
        print(f"{INSTALL} ({type(exc).__name__}: {exc})", file=sys.stderr)
        sys.exit(2)
    from importlib.metadata import version

    return LayerWiseMergedModel, version("fusion-bench")


def finetuned_models(mm: MergeModel, shape, K: int) -> list[nn.Module]:
    """K skeletons of the base (meta weights) whose q,k,v,o weights hold W0 + s_k B_k A_k on the device: what a
    FusionBench user passes as fine-tuned models, without K full copies of the base in memory."""
    models = []
    for k in range(K):
        skel = build_base(shape, torch.device("meta"))
        for layer in mm.layers:
            W0 = layer.base.weight  # (out, in)
            f = mm.adapters.adapters[k].factors[layer.name]
            delta = f.scale * (f.B.to(W0) @ f.A.to(W0))  # (out, in)
            skel.get_submodule(layer.name).weight = nn.Parameter(W0 + delta, requires_grad=False)
        models.append(skel)
    return models


@torch.no_grad()
def build_peer(LayerWiseMergedModel, mm: MergeModel, shape) -> tuple[nn.Module, list[int]]:
    """The peer around the (unwrapped) base; also, per peer column l, the index of its module in ``mm.layers``."""
    K = len(mm.adapters)
    ft = finetuned_models(mm, shape, K)
    with unwrapped(mm) as base:
        targets = {layer.name + ".weight" for layer in mm.layers}
        for name, p in base.named_parameters():
            p.requires_grad_(name in targets)  # the task vectors: targeted weights only
        L = len(targets)
        # strict=False: its merged state dict is the base's state_dict, which lacks Llama's non-persistent rotary
        # buffers (strict=True raises "Missing key(s): rotary_emb.inv_freq"); clamp off as ours (unclamped)
        peer = LayerWiseMergedModel(torch.full((K, L), 1.0 / K, device=mm.device), base, ft,
                                    clamp_weights=False, tie_weights=False, strict=False)
    names = [n[: -len(".weight")] for n, _ in peer.task_vectors[0].named_parameters()]
    index = {layer.name: i for i, layer in enumerate(mm.layers)}
    return peer, [index[n] for n in names]


def state_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def ours_state(mm: MergeModel) -> list[torch.Tensor]:
    return [b for layer in mm.layers for b in layer.buffers(recurse=False)]


@contextlib.contextmanager
def elsewhere(mm: MergeModel | None, peer: nn.Module | None):
    """Move ours' factor buffers and/or the peer's task vectors to the CPU for a peak measurement, then back."""
    moved = []
    if mm is not None:
        for layer in mm.layers:
            for name, buf in list(layer.named_buffers(recurse=False)):
                moved.append((layer, name, buf.device))
                setattr(layer, name, buf.to("cpu"))
    params = list(peer.task_vectors.parameters()) if peer is not None else []
    devices = [p.device for p in params]
    for p in params:
        p.data = p.data.to("cpu")
    try:
        yield
    finally:
        for layer, name, dev in moved:
            setattr(layer, name, getattr(layer, name).to(dev))
        for p, dev in zip(params, devices):
            p.data = p.data.to(dev)


def precision_ctx(mode: str, device: torch.device):
    """fp32 (TF32 off), tf32, bf16 (autocast; coefficients and loss float32) as bench/learn_step.py."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
    if mode == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def loss_of(h: torch.Tensor) -> torch.Tensor:
    """bench/common.py's loss of a last hidden state (B, T, d)."""
    return hidden_loss(SimpleNamespace(last_hidden_state=h))


def ours_forward(mm: MergeModel, src, ids: torch.Tensor) -> torch.Tensor:
    mm.set_source(src)
    return mm(Segments([(0, 0, ids.shape[0])]), input_ids=ids).last_hidden_state  # (B, T, d)


def peer_forward(peer: nn.Module, mm: MergeModel, ids: torch.Tensor) -> torch.Tensor:
    with unwrapped(mm):
        peer.merge_weights()  # W0 + sum_k w_kl tau_kl for every targeted weight (differentiable in w)
        return peer(input_ids=ids).last_hidden_state  # (B, T, d)


def equality(mm: MergeModel, peer: nn.Module, cols: list[int], ids: torch.Tensor, tol: float, seed: int) -> dict:
    """Outputs and coefficient gradients of ours and the peer at the same random coefficients (fp32, TF32 off)."""
    precision_ctx("fp32", ids.device)
    K, L = len(mm.adapters), len(mm.layers)
    C = torch.rand(L, K, generator=torch.Generator().manual_seed(seed + 7)).to(ids.device)  # (L, K) in [0, 1]
    src = layer_coefs(C, L)
    h_ours = ours_forward(mm, src, ids)
    loss_of(h_ours).backward()
    peer.merge_weight.data.copy_(C[cols].T)  # (K, L) in the peer's column order
    peer.merge_weight.grad = None
    h_peer = peer_forward(peer, mm, ids)
    loss_of(h_peer).backward()
    g_ours, g_peer = src.gamma.grad[cols].double(), peer.merge_weight.grad.T.double()  # (L, K) both
    diff = float((h_ours - h_peer).detach().abs().max())
    res = {"max_abs_diff": diff, "max_abs_output": float(h_ours.detach().abs().max()), "tol": tol,
           "grad_rel_diff": float((g_ours - g_peer).norm() / g_peer.norm().clamp_min(1e-30))}
    res["passed"] = bool(diff <= tol and res["grad_rel_diff"] <= tol)
    mm.set_source(None)
    return res


def step_fns(mm: MergeModel, peer: nn.Module, ids: torch.Tensor, ctx) -> dict:
    """name -> (one learning step, context factory or None): floor, ours (layer-wise), peer."""
    K, L = len(mm.adapters), len(mm.layers)
    src = layer_coefs(torch.full((K,), 1.0 / K), L).to(ids.device)
    opt_ours = torch.optim.Adam(src.parameters(), lr=1e-3)
    peer.merge_weight.data.fill_(1.0 / K)
    opt_peer = torch.optim.Adam([peer.merge_weight], lr=1e-3)

    def floor():
        with ctx():
            emb = mm.model.embed_tokens(ids).detach().requires_grad_(True)  # (B, T, d)
            loss = hidden_loss(mm.model(inputs_embeds=emb))
        loss.backward()

    def ours():
        opt_ours.zero_grad(set_to_none=True)
        with ctx():
            loss = loss_of(ours_forward(mm, src, ids))
        loss.backward()
        opt_ours.step()

    def peer_step():
        opt_peer.zero_grad(set_to_none=True)
        with ctx():
            loss = loss_of(peer_forward(peer, mm, ids))
        loss.backward()
        opt_peer.step()
    return {"floor": (floor, lambda: unwrapped(mm)), "ours": (ours, None), "peer": (peer_step, None)}


def peaks(fns: dict, mm: MergeModel, peer: nn.Module, device: torch.device) -> dict:
    """Peak CUDA bytes of one step of each, the other learner's device state moved away (floor: both)."""
    if device.type != "cuda":
        return {}
    away = {"floor": (mm, peer), "ours": (None, peer), "peer": (mm, None)}
    out = {}
    for name, (fn, ctx) in fns.items():
        with elsewhere(*away[name]):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with (ctx() if ctx else contextlib.nullcontext()):
                fn()
            torch.cuda.synchronize(device)
            out[name] = torch.cuda.max_memory_allocated(device)
    return out


def run_mode(mode: str, args, mm, peer, ids) -> dict:
    device = ids.device
    fns = step_fns(mm, peer, ids, precision_ctx(mode, device))
    warmup, repeats = reps(args, 2, 5)
    ms = time_interleaved(fns, device, warmup, repeats)
    res = {"ms": ms, "time_ratio_ours_to_peer": ms["ours"] / ms["peer"],
           "ratio_to_floor": {"ours": ms["ours"] / ms["floor"], "peer": ms["peer"] / ms["floor"]}}
    pk = peaks(fns, mm, peer, device)
    if pk:
        res["peak_bytes"] = pk
        res["peak_ratio_ours_to_peer"] = pk["ours"] / pk["peer"]
        res["over_floor_bytes"] = {k: pk[k] - pk["floor"] for k in ("ours", "peer")}
    mm.set_source(None)
    return res


def print_report(result: dict) -> None:
    eq = result["equality"]
    print(f"peer_fusionbench  device={result['device']}  shape={result['shape']}  K={result['K']}  rank={result['rank']}"
          f"  fusion-bench {result['fusion_bench']}" + ("  (SMOKE: tiny shapes, not results)" if result["smoke"] else ""))
    print(f"equality at equal coefficients: max |h_ours - h_peer| = {eq['max_abs_diff']:.3g} (outputs up to "
          f"{eq['max_abs_output']:.3g}), gradient rel diff {eq['grad_rel_diff']:.3g}, tol {eq['tol']:g}: "
          f"{'PASS' if eq['passed'] else 'FAIL'}")
    sb = result["state_bytes"]
    print(f"extra device state: ours factors {sb['ours_factors'] / 2**20:.1f} MiB, peer task vectors "
          f"{sb['peer_task_vectors'] / 2**20:.1f} MiB (ours/peer {sb['ratio_ours_to_peer']:.4f})")
    rows = []
    for mode, r in result["modes"].items():
        pk = r.get("peak_bytes", {})
        for name in ("floor", "ours", "peer"):
            rows.append([mode, name, r["ms"][name], r["ms"][name] / r["ms"]["floor"],
                         pk[name] / 2**20 if name in pk else ""])
        rows.append([mode, "ours/peer", r["time_ratio_ours_to_peer"], "", r.get("peak_ratio_ours_to_peer", "")])
    print(table(rows, ["precision", "learner", "ms/step", "x floor", "peak MiB"]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--k", type=int, default=8, help="number of adapters")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, tf32, bf16 (tf32: CUDA)")
    p.add_argument("--tol", type=float, default=1e-3, help="equality tolerance (max abs diff; gradient rel diff)")
    args = p.parse_args(argv)
    LayerWiseMergedModel, fb_version = import_peer()
    device = torch.device(args.device)
    shape = shape_from_args(args)
    base = build_base(shape, device, args.seed)
    mm = MergeModel(base, make_adapters(base, args.k, args.rank, device, args.seed), with_heads=False)
    peer, cols = build_peer(LayerWiseMergedModel, mm, shape)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=torch.Generator().manual_seed(args.seed))
    ids = ids.to(device)  # (B, T)
    sb = {"ours_factors": state_bytes(ours_state(mm)), "peer_task_vectors": state_bytes(peer.task_vectors.parameters())}
    sb["ratio_ours_to_peer"] = sb["ours_factors"] / sb["peer_task_vectors"]
    result = {"bench": "peer_fusionbench", **env_info(device), "fusion_bench": fb_version, "smoke": args.smoke,
              "shape": shape.__dict__, "K": args.k, "rank": args.rank, "modules": len(mm.layers),
              "peer": "fusion_bench.models.wrappers.layer_wise_fusion.LayerWiseMergedModel (clamp_weights=False, strict=False)",
              "equality": equality(mm, peer, cols, ids, args.tol, args.seed), "state_bytes": sb, "modes": {}}
    for mode in args.precision.split(","):
        result["modes"][mode] = run_mode(mode, args, mm, peer, ids)
    print_report(result)
    emit(args, result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["equality"]["passed"] else 1)
