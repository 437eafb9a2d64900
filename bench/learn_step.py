"""Step time of coefficient learning vs the floor and vs a materialising reference learner.

One process, one batch, one machine. Per step (median ms, rounds interleaved):
  floor          the plain base model's forward + backward with the input embeddings requiring grad
                 (backward through the whole network, no weight grads, no adapters)
  ours/<g>       MergeModel forward + backward to the coefficients + Adam, granularity g in
                 task, layer, spectral (LoRA-DV gains; skipped if mergecore.forward.spectral is missing)
  materialized   W0 + sum_k gamma_k s_k B_k A_k built for every targeted module each step, run with
                 torch.func.functional_call (task-wise gamma); "materialized_dense": the same from
                 stored dense task vectors (AdaMerging layout)
Precision modes (CUDA): fp32 (TF32 off), tf32, bf16 (autocast; coefficients and loss float32).

    python bench/learn_step.py --device cpu --json --out docs/perf/learn_step_cpu.json
    python bench/learn_step.py --device cuda --precision fp32,tf32,bf16 --json --out docs/perf/learn_step_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import sys

import torch

from common import (MaterializedLearner, coef_step, MergeModel, Segments, add_common_args, emit, env_info, hidden_loss,
                    make_adapters, reps, shape_from_args, table, time_interleaved, build_base, unwrapped)
from mergecore.forward.coefs import layer_coefs, task_coefs


def precision_ctx(mode: str, device: torch.device):
    """(context factory, tf32 flag) of a precision mode."""
    tf32 = mode == "tf32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if mode == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def make_sources(mm, adapters, granularities, device) -> tuple[dict, dict]:
    K, L = len(adapters), len(adapters.modules)
    sources, notes = {}, {}
    init = torch.full((K,), 1.0 / K)
    for g in granularities:
        if g == "task":
            sources[g] = task_coefs(init, L).to(device)
        elif g == "layer":
            sources[g] = layer_coefs(init, L).to(device)
        elif g in ("task_fast", "layer_fast"):  # bench prototype of an engine change (common.FastMatrixCoefs)
            from common import FastMatrixCoefs

            G = 1 if g == "task_fast" else L
            sources[g] = FastMatrixCoefs(init.reshape(1, -1).repeat(G, 1), [0] * L if G == 1 else list(range(L)),
                                         mm.layers).to(device)
            sources[g].expand = {k: v.to(device) for k, v in sources[g].expand.items()}
        elif g == "spectral":
            if importlib.util.find_spec("mergecore.forward.spectral") is None:
                notes[g] = "skipped: mergecore.forward.spectral does not exist in this checkout"
                continue
            try:
                from mergecore.merged import coefs_to_merge
                from mergecore.forward.spectral import SpectralCoefs

                merge = coefs_to_merge(adapters, torch.full((L, K), 1.0 / K, device=device))
                sources[g] = SpectralCoefs(merge, adapters.modules, device=device)
            except Exception as exc:  # the module is developed in parallel; its API may move
                notes[g] = f"skipped: could not build SpectralCoefs ({type(exc).__name__}: {exc})"
    return sources, notes


def step_fns(mm, ref, ref_dense, sources, ids, ctx, floor_model=None):
    """name -> (fn, context factory or None). Each fn is one full learning step."""
    N, emb_layer = ids.shape[0], mm.model.embed_tokens
    seg = Segments([(0, 0, N)])
    fns = {}

    def floor():
        with ctx():
            model = floor_model if floor_model is not None else mm.model
            emb = emb_layer(ids).detach().requires_grad_(True)
            hidden_loss(model(inputs_embeds=emb)).backward()
    fns["floor"] = (floor, None if floor_model is not None else (lambda: unwrapped(mm)))

    for g, src in sources.items():
        fns[f"ours/{g}"] = (coef_step(mm, src, seg, ids, ctx), None)

    for name, r in (("materialized", ref), ("materialized_dense", ref_dense)):
        if r is None:
            continue
        opt = torch.optim.Adam([r.gamma], lr=1e-3)

        def mat(r=r, opt=opt):
            opt.zero_grad(set_to_none=True)
            with ctx():
                loss = hidden_loss(r(input_ids=ids))
            loss.backward()
            opt.step()
        fns[name] = (mat, None if floor_model is not None else (lambda: unwrapped(mm)))
    return fns


def gamma_grads(mm, ref, sources, ids, ctx) -> dict:
    """Coefficient gradients of one forward/backward (no optimiser step) for accuracy checks."""
    out = {}
    seg = Segments([(0, 0, ids.shape[0])])
    if "task" in sources:
        src = sources["task"]
        mm.set_source(src)
        src.gamma.grad = None
        with ctx():
            loss = hidden_loss(mm(seg, input_ids=ids))
        loss.backward()
        out["ours"] = src.gamma.grad.detach().flatten().double().cpu()
    if ref is not None:
        ref.gamma.grad = None
        with unwrapped(mm), ctx():
            loss = hidden_loss(ref(input_ids=ids))
        loss.backward()
        out["materialized"] = ref.gamma.grad.detach().flatten().double().cpu()
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_mode(mode, args, device, mm, ref, ref_dense, sources, ids, reference_grads, floor_model=None):
    ctx = precision_ctx(mode, device)
    fns = step_fns(mm, ref, ref_dense, sources, ids, ctx, floor_model)
    warmup, repeats = reps(args, 2 if device.type == "cpu" else 3, 5 if device.type == "cpu" else 10)
    ms = time_interleaved(fns, device, warmup, repeats)
    floor = ms.pop("floor")
    res = {"floor_ms": floor, "ours_ms": {k.split("/")[1]: v for k, v in ms.items() if k.startswith("ours/")}}
    for name in ("materialized", "materialized_dense"):
        if name in ms:
            res[f"{name}_ms"] = ms[name]
            res[f"{name}_ratio_to_floor"] = ms[name] / floor
    res["ratio_to_floor"] = {g: v / floor for g, v in res["ours_ms"].items()}
    if "materialized_ms" in res:
        res["speedup_vs_materialized"] = {g: res["materialized_ms"] / v for g, v in res["ours_ms"].items()}
    if floor_model is None:
        grads = gamma_grads(mm, ref, sources, ids, ctx)
        if "ours" in grads and "materialized" in grads:
            res["grad_rel_diff_ours_vs_materialized"] = rel(grads["ours"], grads["materialized"])
        if reference_grads is not None and "ours" in grads:
            res["grad_rel_err_vs_fp32"] = rel(grads["ours"], reference_grads["ours"])
        res["_grads"] = grads
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--k", type=int, default=8, help="number of adapters")
    p.add_argument("--granularities", default="task,layer,spectral,task_fast,layer_fast")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, tf32, bf16 (tf32/bf16: CUDA)")
    p.add_argument("--reference", default="factors,dense", help="materialising references to run: factors, dense")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd floor and ours (separate base copy)")
    args = p.parse_args(argv)
    if args.smoke:
        args.k = min(args.k, 2)
    device = torch.device(args.device)
    shape = shape_from_args(args)
    base = build_base(shape, device, args.seed)
    base_plain = copy.deepcopy(base) if args.compile else None
    adapters = make_adapters(base, args.k, args.rank, device, args.seed)
    mm = MergeModel(base, adapters, with_heads=False)
    refs = args.reference.split(",")
    with unwrapped(mm):
        ref = MaterializedLearner(mm.model, adapters, "task", "factors") if "factors" in refs else None
        ref_dense = MaterializedLearner(mm.model, adapters, "task", "dense") if "dense" in refs else None
    sources, notes = make_sources(mm, adapters, args.granularities.split(","), device)
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=gen).to(device)

    result = {"bench": "learn_step", **env_info(device), "shape": shape.__dict__, "K": args.k, "rank": args.rank,
              "modules": len(adapters.modules), "notes": notes, "modes": {}}
    reference_grads = None
    for mode in args.precision.split(","):
        res = run_mode(mode, args, device, mm, ref, ref_dense, sources, ids, reference_grads)
        grads = res.pop("_grads", None)
        if reference_grads is None and mode == "fp32":
            reference_grads = grads
        result["modes"][mode] = res
    if args.compile:
        result["compile"] = run_compiled(args, device, mm, base_plain, sources, ids)
    if device.type == "cuda":
        result["host_syncs_per_step"] = count_syncs(mm, sources, ids)
    first = result["modes"][args.precision.split(",")[0]]
    result.update({k: v for k, v in first.items()})
    print_tables(result)
    emit(args, result)
    return result


def count_syncs(mm, sources, ids) -> dict:
    """Host-device synchronisations in one forward + backward per source (torch sync debug mode)."""
    import warnings

    out, seg = {}, Segments([(0, 0, ids.shape[0])])
    for g, src in sources.items():
        mm.set_source(src)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                hidden_loss(mm(seg, input_ids=ids)).backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out[g] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def run_compiled(args, device, mm, base_plain, sources, ids) -> dict:
    """torch.compile of the floor model and of the MergeModel's inner model (eager sources)."""
    out = {}
    try:
        floor_model = torch.compile(base_plain)
        inner = mm.model
        mm.model = torch.compile(inner)
        try:
            res = run_mode(args.precision.split(",")[-1], args, device, mm, None, None,
                           {g: s for g, s in sources.items() if g == "task"}, ids, None, floor_model)
        finally:
            mm.model = inner
        out.update(res)
        out["precision"] = args.precision.split(",")[-1]
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return out


def print_tables(result: dict) -> None:
    rows = []
    for mode, r in result["modes"].items():
        rows.append([mode, "floor", r["floor_ms"], 1.0, ""])
        for g, v in r["ours_ms"].items():
            rows.append([mode, f"ours/{g}", v, r["ratio_to_floor"][g], f"{r.get('speedup_vs_materialized', {}).get(g, 0):.2f}x"])
        for name in ("materialized", "materialized_dense"):
            if f"{name}_ms" in r:
                rows.append([mode, name, r[f"{name}_ms"], r[f"{name}_ratio_to_floor"], ""])
    if "compile" in result and "floor_ms" in result["compile"]:
        c = result["compile"]
        rows.append([f"compile/{c['precision']}", "floor", c["floor_ms"], 1.0, ""])
        for g, v in c["ours_ms"].items():
            rows.append([f"compile/{c['precision']}", f"ours/{g}", v, c["ratio_to_floor"][g], ""])
    print(f"learn_step  device={result['device']}  shape={result['shape']}  K={result['K']}  rank={result['rank']}")
    print(table(rows, ["precision", "learner", "ms/step", "x floor", "vs materialized"]))
    for g, n in result["notes"].items():
        print(f"{g}: {n}")
    if "compile" in result and "error" in result["compile"]:
        print("compile:", result["compile"]["error"])


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
