"""Stage 1 (expert predictions): one routed pass (RowRouting) vs K separate passes.

A batch of K tasks x --batch rows: row block k must go through expert k only. Routed: one forward
of the whole batch with ``RowRouting`` (every layer applies all K factors, masked per row).
Separate: K forwards of --batch rows with ``FixedCoefs`` one-hot on expert k. Both no_grad;
outputs checked equal. "routed_cached" is a bench-only prototype of RowRouting that builds the
(N, R) row mask once per forward instead of once per layer (an engine change to measure).

    python bench/stage1.py --device cpu --json --out docs/perf/stage1_cpu.json
"""

from __future__ import annotations

import argparse

import torch

from common import (MergeModel, Segments, add_common_args, build_base, emit, env_info, make_adapters, reps,
                    shape_from_args, table, time_interleaved)
from mergecore.forward.coefs import FixedCoefs, RowRouting


class CachedRowRouting(RowRouting):
    """Prototype: the one-hot row mask per owner layout is computed once per batch (segments object)."""

    def __init__(self, slot, num_tasks: int):
        super().__init__(slot, num_tasks)
        self._key, self._onehot = None, None

    def lora_term(self, layer, x):
        seg = self.slot.segments
        if self._key is not seg:
            rows = seg.task_of_rows(device=x.device)
            self._onehot, self._key = torch.nn.functional.one_hot(rows, self.num_tasks).float(), seg
        return layer.factored(x, self._onehot[:, layer.owner])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--k", type=int, default=8)
    args = p.parse_args(argv)
    if args.smoke:
        args.k = 2
    device = torch.device(args.device)
    shape = shape_from_args(args)
    base = build_base(shape, device, args.seed)
    adapters = make_adapters(base, args.k, args.rank, device, args.seed)
    mm = MergeModel(base, adapters, with_heads=False)
    K, L, n = args.k, len(adapters.modules), shape.batch
    ids = torch.randint(0, shape.vocab, (K * n, shape.seq), generator=torch.Generator().manual_seed(0)).to(device)
    seg_all = Segments([(k, k * n, (k + 1) * n) for k in range(K)])
    routed, cached = RowRouting(mm.slot, K), CachedRowRouting(mm.slot, K)
    onehots = [FixedCoefs(torch.nn.functional.one_hot(torch.full((L,), k), K).float()) for k in range(K)]

    @torch.no_grad()
    def run_routed(src=routed):
        mm.set_source(src)
        return mm(seg_all, input_ids=ids).last_hidden_state

    @torch.no_grad()
    def run_separate():
        outs = []
        for k in range(K):
            mm.set_source(onehots[k])
            outs.append(mm(Segments([(k, 0, n)]), input_ids=ids[k * n:(k + 1) * n]).last_hidden_state)
        return torch.cat(outs)

    a, b, c = run_routed(), run_separate(), run_routed(cached)
    err = float((a - b).norm() / b.norm())
    err_cached = float((c - b).norm() / b.norm())
    warmup, repeats = reps(args, 1 if device.type == "cpu" else 3, 5 if device.type == "cpu" else 20)
    ms = time_interleaved({"routed": run_routed, "routed_cached": lambda: run_routed(cached),
                           "separate": run_separate}, device, warmup, repeats)
    result = {"bench": "stage1", **env_info(device), "shape": shape.__dict__, "K": K, "rows_per_task": n,
              "routed_ms": ms["routed"], "routed_cached_ms": ms["routed_cached"], "separate_ms": ms["separate"],
              "speedup_routed_vs_separate": ms["separate"] / ms["routed"],
              "speedup_cached_vs_routed": ms["routed"] / ms["routed_cached"],
              "rel_diff_routed_vs_separate": err, "rel_diff_cached_vs_separate": err_cached}
    print(f"stage1  device={device.type}  shape={shape.__dict__}  K={K}")
    print(table([[k, v, ms["separate"] / v] for k, v in ms.items()], ["pass", "ms", "speedup vs separate"]))
    emit(args, result)
    return result


if __name__ == "__main__":
    main()
