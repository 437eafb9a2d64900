"""The GLUE study: SourceJS Table 1 on the offline MiniLM experts, three seeds, one report.

    python -m scripts.study.run --glue-dir ../shared/data/glue [--seeds 0 1 2] [--steps 150]
    python -m scripts.study.run --experts smollm2 --adapters-dir DIR --device cuda --dtype bfloat16 \
        --rows task_arithmetic ties "entropy, layer" "JS, task" "JS, layer" LoRA-DV --skip-divergence

``--experts minilm`` (default) reads the committed MiniLM experts and writes docs/results.md;
``--experts smollm2`` reads SmolLM2 verbalizer experts (``mergecore/demo/glue-smollm2`` or
``--adapters-dir``, e.g. trained by scripts/study/train_smollm.py on a GPU: scripts/gpu_study.sh)
and writes docs/results-smollm2.md, so the MiniLM results stay. ``--rows`` limits every seed,
the first too, to the rows named (uniform, pre-trained and experts are always there).

Rows: pre-trained, experts, uniform and every static merge at its paper defaults; learned
coefficients (entropy task/layer, supervised CE, KL, JS task/layer); LoRA-DV (JS) on top of the
best static merge. A seed draws the 128 unlabeled calibration inputs per task from the training
file and seeds the learner and the random masks (DARE); the evaluation rows are the same for
every seed, so data-independent static merges are run once (their spread is 0 by construction).
Plus SourceJS Fig. 2 (coefficient stability), the collapse signature (confidence and
confidently-wrong share, first vs last periodic evaluation) and DivMerge Table 2 (divergence
between experts vs cross-task score drop). Every run lands in the workspace's run store, so the
app's Compare / Diagnose pages show them; results are written after every seed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from mergecore.analysis.stability import stability
from mergecore.data.glue import GlueParams
from mergecore.demo.glue import ADAPTER_DIR, SMOLLM_DIR, committed, glue_workbench
from mergecore.forward.evaluate import average
from mergecore.learn.params import LearnParams
from mergecore.merges import METHODS
from mergecore.numbers import as_float, dumps, fmt, rank_key
from mergecore.placement import DTYPES, LoadParams
from mergecore.runs.runner import cached_baselines, run_learning, run_static
from mergecore.runs.store import RunStore
from scripts.study.report import write_report

SEEDED_STATIC = ("dare_linear", "dare_ties", "osrm")  # depend on the seed (masks) or on calibration inputs
STATIC = tuple(m for m in METHODS if m not in ("concat", "uniform") and m not in SEEDED_STATIC)
LEARNED = (("entropy, task", "entropy", "task"), ("entropy, layer", "entropy", "layer"),
           ("supervised CE, task", "ce", "task"), ("KL, task", "kl", "task"),
           ("JS, task", "js", "task"), ("JS, layer", "js", "layer"))
LORADV = "LoRA-DV"
ROWS = ("uniform", *STATIC, *SEEDED_STATIC, *(label for label, _, _ in LEARNED), LORADV)
EXPERTS = {  # --experts: (adapter folder, report, run store) defaults
    "minilm": (ADAPTER_DIR, Path("docs/results.md"), Path("workspace-glue")),
    "smollm2": (SMOLLM_DIR, Path("docs/results-smollm2.md"), Path("workspace-glue/smollm2")),
}
TITLES = {"minilm": "MiniLM (all-MiniLM-L6-v2) GLUE experts, classifier heads",
          "smollm2": "SmolLM2-135M-Instruct GLUE experts, decoder-only with verbalizers"}
KEEP = "<!-- kept after the tables -->"  # what follows this line in --out survives a rewrite of the tables


def collapse(store: RunStore, run_id: str, tasks: list[str]) -> dict:
    """Task-averaged score, confidence and confidently-wrong share at the first and last periodic evaluation."""
    evals = store.events(run_id, "eval")
    if not evals:
        return {}
    first, last = evals[0], evals[-1]
    mean = lambda e, key: sum(as_float(e[key][t]) for t in tasks) / len(tasks)  # noqa: E731
    return {f"{key}_{when}": mean(e, key) for key in ("confidence", "confidently_wrong", "score")
            for when, e in (("first", first), ("last", last))}


def _static(bench, store, method: str, seed: int, results: dict) -> None:
    from mergecore.merges import get_method

    params = get_method(method).params_cls()
    if "seed" in params.__dataclass_fields__:
        params = replace(params, seed=seed)
    t = time.perf_counter()
    _, res = run_static(bench, method, params, store=store, name=f"{method} s{seed}")
    results["rows"].setdefault(method, {})[str(seed)] = res["scores"]
    results["seconds"].setdefault(method, []).append(time.perf_counter() - t)
    print(f"  {method:16s} avg {fmt(average(res['scores'])):>6s}  ({time.perf_counter() - t:.0f} s)", flush=True)


def _learned(bench, store, label: str, params: LearnParams, seed: int, results: dict) -> None:
    t = time.perf_counter()
    run_id, res = run_learning(bench, params, store, name=f"{label} s{seed}")
    results["rows"].setdefault(label, {})[str(seed)] = res["scores"]
    results["seconds"].setdefault(label, []).append(time.perf_counter() - t)
    if "coefs" in res:
        coefs = torch.tensor(res["coefs"])
        results["stability"].setdefault(label, {})[str(seed)] = stability(coefs[:1] if params.granularity == "task" else coefs)
    results["collapse"].setdefault(label, {})[str(seed)] = collapse(store, run_id, bench.tasks.names)
    print(f"  {label:16s} avg {fmt(average(res['scores'])):>6s}  ({time.perf_counter() - t:.0f} s)", flush=True)


def best_static(results: dict) -> str:
    seed0 = {m: runs[min(runs)] for m, runs in results["rows"].items() if m in METHODS}
    return max(seed0, key=lambda m: rank_key(average(seed0[m]))) if seed0 else "uniform"  # NaN never wins


def wanted(args, label: str, seed: int) -> bool:
    """Whether row ``label`` runs in ``seed``: ``--rows`` limits every seed, ``--only`` the seeds after the first."""
    if args.rows and label not in args.rows:
        return False
    return seed == args.first_seed or not args.only or label in args.only


def run_seed(args, seed: int, store: RunStore, results: dict, base: dict | None) -> dict:
    bench = glue_workbench(args.glue_dir, GlueParams(calibration=args.calibration, evaluation=args.eval_size, seed=seed),
                           names=args.tasks, device=args.device, folder=args.adapters_dir,
                           load=LoadParams(dtype=args.dtype))
    if base is not None:
        bench.baselines = base  # same adapters, same evaluation rows: identical by construction
    base = cached_baselines(bench, store)
    if seed == args.first_seed:  # data-independent merges and the divergence matrix: once
        for method in STATIC:
            if wanted(args, method, seed):
                _static(bench, store, method, seed, results)
        if not args.skip_divergence:
            from mergecore.analysis.forward_lenses import divergence_of

            t = time.perf_counter()
            results["divergence"] = divergence_of(bench, "evaluation", limit=args.divergence_rows)
            print(f"  divergence matrix ({time.perf_counter() - t:.0f} s)", flush=True)
    for method in SEEDED_STATIC:
        if wanted(args, method, seed):
            _static(bench, store, method, seed, results)
    params = LearnParams(steps=args.steps, seed=seed, eval_every=max(1, args.steps // 3), eval_limit=100)
    for label, objective, granularity in LEARNED:
        if wanted(args, label, seed):
            _learned(bench, store, label, replace(params, objective=objective, granularity=granularity), seed, results)
    start = best_static(results)
    if wanted(args, LORADV, seed):
        loradv = replace(params, objective="js", granularity="spectral", lr=0.005, start=start, l2=0.0)
        _learned(bench, store, f"{LORADV} (JS) on {start}", loradv, seed, results)
    return base


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue-dir", type=Path, default=Path("../shared/data/glue"))
    ap.add_argument("--experts", choices=tuple(EXPERTS), default="minilm", help=(
        "minilm: the committed MiniLM experts -> docs/results.md; smollm2: SmolLM2 verbalizer experts -> "
        "docs/results-smollm2.md"))
    ap.add_argument("--adapters-dir", type=Path, help="folder with one adapter folder per GLUE task "
                    "(default: the --experts preset's committed folder)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help=(
        "base weights: auto = the checkpoint's dtype on CUDA, float32 on the CPU (LoRA path and coefficients "
        "stay float32)"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", help="GLUE tasks (default: every task with an expert in the adapter folder)")
    ap.add_argument("--steps", type=int, default=150, help="learning steps per learned run")
    ap.add_argument("--calibration", type=int, default=128, help="unlabeled calibration inputs per task")
    ap.add_argument("--eval-size", type=int, default=400, help="dev rows per task (the same rows for every seed)")
    ap.add_argument("--divergence-rows", type=int, default=200, help="dev rows per task for the divergence matrix")
    ap.add_argument("--skip-divergence", action="store_true")
    ap.add_argument("--rows", nargs="+", metavar="ROW", help=(
        f"run only these rows in every seed; valid: {', '.join(ROWS)} (uniform, pre-trained and experts always run)"))
    ap.add_argument("--only", nargs="+", metavar="ROW", help=(
        "after the first seed, run only these rows (e.g. 'JS, layer' dare_ties LoRA-DV); the first seed runs all"))
    ap.add_argument("--resume", action="store_true", help="add seeds to the results already in --out's .json")
    ap.add_argument("--report-only", action="store_true", help="rewrite --out from its .json; run nothing")
    ap.add_argument("--workspace", type=Path, help="run store folder (default workspace-glue, "
                    "workspace-glue/smollm2 for --experts smollm2)")
    ap.add_argument("--out", type=Path, help="report (default docs/results.md; docs/results-smollm2.md for smollm2)")
    return ap


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the --experts preset's defaults (adapter folder, report, run store, tasks); one line for a bad row."""
    folder, out, workspace = EXPERTS[args.experts]
    args.adapters_dir = args.adapters_dir or folder
    args.out, args.workspace = args.out or out, args.workspace or workspace
    bad = [r for r in (args.rows or []) + (args.only or []) if r not in ROWS]
    if bad:
        raise SystemExit(f"error: unknown row(s) {', '.join(map(repr, bad))}; valid: {', '.join(ROWS)}")
    if not args.report_only and not args.tasks:
        args.tasks = [d.name for d in committed(args.adapters_dir)]
        if not args.tasks:
            raise SystemExit(f"error: no adapter in {args.adapters_dir} (expected <task>/adapter_model.safetensors "
                             "for GLUE tasks); pass --adapters-dir")
    return args


def write_results(results: dict, out: Path, experts: str = "minilm") -> None:
    """The report (scripts/study/report.py) in ``out``, keeping what follows ``KEEP`` (hand-written sections after
    the tables); a new file starts with a title naming the experts."""
    text = out.read_text() if out.exists() else ""
    if not text:
        out.write_text(f"# GLUE study: {TITLES[experts]}\n\n<!-- tables -->\n")
    tail = text.partition(KEEP)[2]
    write_report(results, out)
    if tail:
        out.write_text(out.read_text() + "\n" + KEEP + tail)


def main(argv: list[str] | None = None) -> None:
    args = resolve_args(parser().parse_args(argv))
    if args.report_only:
        write_results(json.loads(args.out.with_suffix(".json").read_text()), args.out, args.experts)
        return
    t0, store, base = time.perf_counter(), RunStore(args.workspace), None
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": {}, "seconds": {}, "stability": {},
               "collapse": {}, "seeds_done": []}
    if args.resume:  # same adapters and evaluation rows: keep the first seeds' rows and baselines
        if not args.out.with_suffix(".json").is_file():
            raise SystemExit(f"error: {args.out.with_suffix('.json')} does not exist; run without --resume first")
        results = json.loads(args.out.with_suffix(".json").read_text())
        results.setdefault("runs", []).append({k: str(v) for k, v in vars(args).items()})
        base, t0 = results["baselines"], t0 - results.get("total_seconds", 0.0)
    args.first_seed = results["seeds_done"][0] if results["seeds_done"] else args.seeds[0]
    for seed in args.seeds:
        if seed in results["seeds_done"]:
            continue
        print(f"seed {seed}", flush=True)
        base = run_seed(args, seed, store, results, base)
        results.update(baselines=base, seeds_done=results["seeds_done"] + [seed], total_seconds=time.perf_counter() - t0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(dumps(results, indent=1))  # undefined numbers -> null
        write_results(results, args.out, args.experts)
    print(f"study done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
