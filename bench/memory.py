"""Peak memory and step time of one coefficient-learning step vs K, ours vs materialising.

For K in --ks (default 2,4,8,16) adapters of rank 16 on q,k,v,o: the floor (plain base forward +
backward to the input embeddings), ours (MergeModel, task- and layer-wise), the materialising
reference from factors and from stored dense task vectors (bench/common.py).

Peak memory: CUDA: torch.cuda.max_memory_allocated over one step after a warm-up step, in-process,
everything that lives at the time counted (base weights, factors or dense task vectors,
activations, merged weights, gradients). CPU: peak RSS of a fresh child process per measurement
minus its RSS after imports (allocator slack included).

    python bench/memory.py --device cpu --json --out docs/perf/memory_cpu.json
    python bench/memory.py --device cuda --json --out docs/perf/memory_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import torch

from common import (MaterializedLearner, MergeModel, Segments, add_common_args, build_base, emit, env_info,
                    hidden_loss, make_adapters, param_bytes, peak_rss_bytes, reps, rss_bytes, shape_from_args,
                    table, time_interleaved, unwrapped)
from mergecore.forward.coefs import layer_coefs, task_coefs

METHODS = ("floor", "ours/task", "ours/layer", "materialized", "materialized_dense")


def step_fn(method: str, mm, adapters, ids):
    """(fn, context factory) for one learning step of ``method``; state built here."""
    K, L = len(adapters), len(adapters.modules)
    if method == "floor":
        def floor():
            emb = mm.model.embed_tokens(ids).detach().requires_grad_(True)
            hidden_loss(mm.model(inputs_embeds=emb)).backward()
        return floor, (lambda: unwrapped(mm))
    if method.startswith("ours/"):
        make = task_coefs if method == "ours/task" else layer_coefs
        src = make(torch.full((K,), 1.0 / K), L).to(ids.device)
        opt = torch.optim.Adam(src.parameters(), lr=1e-3)
        seg = Segments([(0, 0, ids.shape[0])])

        def ours():
            mm.set_source(src)
            opt.zero_grad(set_to_none=True)
            hidden_loss(mm(seg, input_ids=ids)).backward()
            opt.step()
        return ours, None
    with unwrapped(mm):
        ref = MaterializedLearner(mm.model, adapters, "task", "dense" if method.endswith("dense") else "factors")
    opt = torch.optim.Adam([ref.gamma], lr=1e-3)

    def mat():
        opt.zero_grad(set_to_none=True)
        hidden_loss(ref(input_ids=ids)).backward()
        opt.step()
    return mat, (lambda: unwrapped(mm))


def measure_cuda(method, mm, adapters, ids, warmup, repeats) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    fn, ctx = step_fn(method, mm, adapters, ids)
    ms = time_interleaved({method: (fn, ctx)}, ids.device, max(warmup, 1), repeats)[method]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    time_interleaved({method: (fn, ctx)}, ids.device, 0, 1)
    peak = torch.cuda.max_memory_allocated()
    del fn, ctx
    return {"ms": ms, "peak_bytes": peak}


def child(args) -> None:
    """One CPU measurement in a fresh process: prints {"ms", "peak_bytes"}."""
    from transformers import LlamaModel  # noqa: F401  (imported before the baseline RSS)

    method, K = args.child.split(",")
    base_rss = rss_bytes()
    shape = shape_from_args(args)
    device = torch.device("cpu")
    base = build_base(shape, device, args.seed)
    adapters = make_adapters(base, int(K), args.rank, device, args.seed)
    mm = MergeModel(base, adapters, with_heads=False)
    ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=torch.Generator().manual_seed(0))
    fn, ctx = step_fn(method, mm, adapters, ids)
    warmup, repeats = reps(args, 1, 3)
    ms = time_interleaved({method: (fn, ctx)}, device, warmup, repeats)[method]
    print(json.dumps({"ms": ms, "peak_bytes": peak_rss_bytes() - base_rss}))


def measure_cpu_child(method, K, argv, in_process: bool) -> dict:
    if in_process:  # --smoke: the RSS high-water mark is then shared by all methods (checks the code path only)
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            child(argparse.Namespace(**{**vars(in_process), "child": f"{method},{K}"}))
        return json.loads(buf.getvalue().strip().splitlines()[-1])
    out = subprocess.run([sys.executable, __file__, *argv, "--child", f"{method},{K}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def strip_output_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif a != "--json" and not a.startswith("--out="):
            out.append(a)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--ks", default="2,4,8,16")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    device = torch.device(args.device)
    shape = shape_from_args(args)
    ks = [2] if args.smoke else [int(k) for k in args.ks.split(",")]
    methods = args.methods.split(",")
    warmup, repeats = reps(args, 1, 3 if device.type == "cpu" else 5)
    result = {"bench": "memory", **env_info(device), "shape": shape.__dict__, "rank": args.rank, "ks": ks, "rows": []}
    if device.type == "cuda":
        base = build_base(shape, device, args.seed)
        result["weights_bytes"] = param_bytes(base)
        ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=torch.Generator().manual_seed(0)).to(device)
    else:
        base = build_base(shape, device, args.seed)
        result["weights_bytes"] = param_bytes(base)
        del base
        child_argv = strip_output_args(argv)
    for K in ks:
        if device.type == "cuda":
            adapters = make_adapters(base, K, args.rank, device, args.seed)
            mm = MergeModel(base, adapters, with_heads=False)
        for method in methods:
            if device.type == "cuda":
                r = measure_cuda(method, mm, adapters, ids, warmup, repeats)
            else:
                r = measure_cpu_child(method, K, child_argv, args if args.smoke else False)
            result["rows"].append({"K": K, "method": method, **r})
        if device.type == "cuda":
            del mm, adapters
    summarize(result)
    print_table(result)
    emit(args, result)
    return result


def summarize(result: dict) -> None:
    """Per K: ours/materialized ratios of peak memory (total and above the floor) and of time."""
    by = {(r["K"], r["method"]): r for r in result["rows"]}
    summary = {}
    for K in result["ks"]:
        s = {}
        floor = by.get((K, "floor"))
        for mat in ("materialized", "materialized_dense"):
            for g in ("task", "layer"):
                o, m = by.get((K, f"ours/{g}")), by.get((K, mat))
                if not (o and m):
                    continue
                s[f"peak_ratio_ours_{g}_to_{mat}"] = o["peak_bytes"] / m["peak_bytes"]
                s[f"speedup_ours_{g}_vs_{mat}"] = m["ms"] / o["ms"]
                if floor:
                    over_o = o["peak_bytes"] - floor["peak_bytes"]
                    over_m = m["peak_bytes"] - floor["peak_bytes"]
                    s[f"over_floor_ratio_ours_{g}_to_{mat}"] = over_o / over_m if over_m > 0 else None
        summary[str(K)] = s
    result["summary"] = summary


def print_table(result: dict) -> None:
    floor = {r["K"]: r for r in result["rows"] if r["method"] == "floor"}
    rows = []
    for r in result["rows"]:
        f = floor.get(r["K"])
        rows.append([r["K"], r["method"], r["ms"], r["peak_bytes"] / 2**20,
                     (r["peak_bytes"] - f["peak_bytes"]) / 2**20 if f else "", r["ms"] / f["ms"] if f else ""])
    print(f"memory  device={result['device']}  shape={result['shape']}  weights={result['weights_bytes'] / 2**20:.1f} MiB")
    print(table(rows, ["K", "learner", "ms/step", "peak MiB", "over floor MiB", "x floor time"]))


if __name__ == "__main__":
    main()
