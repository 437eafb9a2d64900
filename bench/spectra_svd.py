"""Analysis spectra through the factors / core space vs a dense SVD, at d = 768 and 4096.

One d x d module, K adapters of rank r (random factors, float32):
  task:   singular values of each s_k B_k A_k: ``lora_singular_values`` (QR of the factors, r x r
          core, float64) vs ``torch.linalg.svdvals`` of the dense d x d delta (float32);
  merged: spectrum of sum_k c_k s_k B_k A_k: ``core_space`` + svdvals of the (R x R) merged core
          (float64) vs svdvals of the dense merged delta (float32).
Timed per task / per merge (median ms); the dense task SVD is timed on one task. Also the largest
difference of the leading singular values relative to the top one (they must agree).

    python bench/spectra_svd.py --device cpu --json --out docs/perf/spectra_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import sync, table  # noqa: E402
from mergecore.adapters import LoraFactors  # noqa: E402
from mergecore.analysis.spectra import lora_singular_values  # noqa: E402
from mergecore.core_space import core_space  # noqa: E402


def timed(fn, device, repeats: int):
    out, times = None, []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return out, times[len(times) // 2]


def one_size(d: int, K: int, r: int, device, repeats: int, dense_repeats: int) -> dict:
    gen = torch.Generator().manual_seed(d)
    fs = [LoraFactors((torch.randn(r, d, generator=gen) / d ** 0.5).to(device),
                      (torch.randn(d, r, generator=gen) * 0.02).to(device), 2.0) for _ in range(K)]
    c = torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
    timed(lambda: lora_singular_values(fs[0].B, fs[0].A, fs[0].scale), device, 1)  # warm-up (kernels, handles)
    timed(lambda: torch.linalg.svdvals(fs[0].scale * fs[0].B @ fs[0].A), device, 1)
    ours_task, t_task = timed(lambda: [lora_singular_values(f.B, f.A, f.scale) for f in fs], device, repeats)
    dense_task, t_dense_task = timed(lambda: torch.linalg.svdvals(fs[0].scale * fs[0].B @ fs[0].A), device, dense_repeats)

    def merged_core():
        cs = core_space(fs)
        return torch.linalg.svdvals(torch.einsum("k,kij->ij", c, cs.cores))

    def merged_dense():
        delta = sum(float(c[k]) * f.scale * (f.B @ f.A) for k, f in enumerate(fs))
        return torch.linalg.svdvals(delta)

    merged_core()
    ours_m, t_merged = timed(merged_core, device, repeats)
    dense_m, t_dense_merged = timed(merged_dense, device, dense_repeats)
    top = min(len(ours_m), K * r)
    return {
        "d": d, "K": K, "rank": r,
        "task_factors_ms": t_task / K, "task_dense_ms": t_dense_task,
        "task_speedup": t_dense_task / (t_task / K),
        "merged_core_ms": t_merged, "merged_dense_ms": t_dense_merged, "merged_speedup": t_dense_merged / t_merged,
        "task_rel_diff": float((ours_task[0][:r].cpu() - dense_task[:r].double().cpu()).abs().max() / dense_task[0].cpu()),
        "merged_rel_diff": float((ours_m[:top].cpu() - dense_m[:top].double().cpu()).abs().max() / dense_m[0].cpu()),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dims", default="768,4096")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dense-repeats", type=int, default=None, help="default 1 on cpu, 5 on cuda")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dims = [64] if args.smoke else [int(x) for x in args.dims.split(",")]
    dense_repeats = args.dense_repeats or (1 if device.type == "cpu" else 5)
    rows = [one_size(d, 2 if args.smoke else args.k, args.rank, device, 1 if args.smoke else args.repeats,
                     1 if args.smoke else dense_repeats) for d in dims]
    result = {"bench": "spectra", "device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "rows": rows}
    print(f"spectra  device={device.type}  K={args.k}  rank={args.rank}")
    print(table([[r["d"], r["task_factors_ms"], r["task_dense_ms"], r["task_speedup"], r["merged_core_ms"],
                  r["merged_dense_ms"], r["merged_speedup"], r["merged_rel_diff"]] for r in rows],
                ["d", "task factors ms", "task dense ms", "speedup", "merged core ms", "merged dense ms", "speedup",
                 "rel diff"]))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
