"""The demo study: every static method at its defaults and every objective x granularity, one table.

    python scripts/demo_study.py [--steps 150] [--workspace DIR] [--out docs/demo_results.md]

Runs in one process on one Workbench (the demo kit), stores every run in the workspace's run
store (so the app's Compare page shows them), and writes a markdown report with the per-task
scores, average, ANP, coefficient stability (SourceJS Fig. 2) and the collapse signature
(mean confidence and confidently-wrong share on the evaluation split, first vs last periodic
evaluation). Numbers are as measured; nothing is tuned to produce a result.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mergecore.analysis.stability import stability
from mergecore.demo.kit import demo_workbench
from mergecore.forward.evaluate import anp, average
from mergecore.learn.params import LearnParams
from mergecore.merges import METHODS
from mergecore.numbers import dumps, fmt, rank_key
from mergecore.runs.runner import cached_baselines, run_learning, run_static
from mergecore.runs.store import RunStore
from scripts.study.run import collapse

LEARNED = [("entropy-task", "entropy", "task"), ("entropy-layer", "entropy", "layer"), ("js-task", "js", "task"),
           ("js-layer", "js", "layer"), ("kl-task", "kl", "task"), ("ce-task", "ce", "task")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--workspace", type=Path, default=Path("workspace-study"))
    ap.add_argument("--out", type=Path, default=Path("docs/demo_results.md"))
    ap.add_argument("--skip-static", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench, store = demo_workbench(device="cpu"), RunStore(args.workspace)
    names = bench.tasks.names
    base = cached_baselines(bench, store)
    rows, stab, coll, times = dict(base), {}, {}, {}
    if not args.skip_static:
        for method in METHODS:
            if method == "concat":
                continue
            t = time.perf_counter()
            _, res = run_static(bench, method, store=store)
            rows[method], times[method] = res["scores"], time.perf_counter() - t
            print(f"{method:16s} avg {fmt(average(res['scores'])):>6s}  ({times[method]:.0f} s)", flush=True)
    params = LearnParams(steps=args.steps, eval_every=max(1, args.steps // 6))
    for label, objective, granularity in LEARNED:
        t = time.perf_counter()
        run_id, res = run_learning(bench, replace(params, objective=objective, granularity=granularity), store, name=label)
        rows[label], times[label] = res["scores"], time.perf_counter() - t
        coefs = torch.tensor(res["coefs"])
        stab[label] = stability(coefs[:1] if granularity == "task" else coefs)
        coll[label] = collapse(store, run_id, names)
        print(f"{label:16s} avg {fmt(average(res['scores'])):>6s}  ({times[label]:.0f} s)", flush=True)
    best_static = max((m for m in rows if m in METHODS), key=lambda m: rank_key(average(rows[m])), default="uniform")
    start = best_static if best_static in METHODS else "uniform"
    t = time.perf_counter()
    run_id, res = run_learning(bench, replace(params, objective="js", granularity="spectral", lr=0.005, start=start, l2=0.0),
                               store, name=f"loradv-js-on-{start}")
    label = f"loradv(js) on {start}"
    rows[label], times[label], coll[label] = res["scores"], time.perf_counter() - t, collapse(store, run_id, names)
    print(f"{label:16s} avg {fmt(average(res['scores'])):>6s}  ({times[label]:.0f} s)", flush=True)
    write_report(args, rows, base, stab, coll, times, time.perf_counter() - t0)


def write_report(args, rows, base, stab, coll, times, total: float) -> None:
    names = list(base["experts"])
    lines = [f"# Demo study (measured; `python scripts/demo_study.py --steps {args.steps}`)", "",
             f"Total wall time {total:.0f} s on this machine (CPU). Scores in percent (acceptability: Matthews corr.).", "",
             "| method | " + " | ".join(names) + " | avg | ANP | seconds |", "|---" * (len(names) + 4) + "|"]
    for label, scores in rows.items():
        cells = " | ".join(fmt(scores.get(t), 1) for t in names)
        lines.append(f"| {label} | {cells} | {fmt(average(scores))} | {fmt(anp(scores, base['experts']), 3)} | "
                     f"{fmt(times.get(label), 0)} |")
    lines += ["", "## Coefficient stability (SourceJS Fig. 2)", "", "| run | range | std | negatives | min | max |",
              "|---|---|---|---|---|---|"]
    for label, s in stab.items():
        lines.append(f"| {label} | {s['range']:.3f} | {s['std']:.3f} | {s['negatives']} | {s['min']:.3f} | {s['max']:.3f} |")
    lines += ["", "## Collapse signature (evaluation split, averages over tasks, first -> last periodic eval)", "",
              "| run | score | mean confidence | confidently wrong |", "|---|---|---|---|"]
    for label, c in coll.items():
        if c:
            lines.append(f"| {label} | {c['score_first']:.1f} -> {c['score_last']:.1f} | "
                         f"{c['confidence_first']:.3f} -> {c['confidence_last']:.3f} | "
                         f"{c['confidently_wrong_first']:.3f} -> {c['confidently_wrong_last']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(dumps({"scores": rows, "stability": stab, "collapse": coll,
                                                    "seconds": times, "total_seconds": total}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
