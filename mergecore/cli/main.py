"""Command line: ``python -m mergecore {learn,eval,runs,compare,...}``.

Typed parameter dataclasses become flags (one definition: the dataclass); bad input exits
with code 2 and one line on stderr; ``--json`` prints one JSON object last on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from mergecore.errors import MergecoreError

# ----------------------------------------------------------------------------- shared options


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field, default None so presets and explicit flags can be layered."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "") + f" (default: {f.default})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", default=None, help=helptext)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), type(f.default))
            parser.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"), help=helptext)


def dataclass_from_args(cls, args: argparse.Namespace, base=None):
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base or cls(), **given)


def add_source_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--demo", action="store_true", help="the embedded demo kit (default when no adapters are given)")
    src.add_argument("--adapters", nargs="+", metavar="DIR", help="PEFT LoRA adapter folders or hub ids")
    p.add_argument("--base-model", help="base model path or hub id (overrides the adapters' configs)")
    p.add_argument("--allow-bin", action="store_true", help="accept adapter_model.bin pickles (loaded weights_only)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow base models with custom code")
    p.add_argument("--glue", nargs="*", metavar="TASK", help="GLUE tasks (default: matched from adapter names)")
    p.add_argument("--glue-dir", help="local GLUE folder (<TASK>/train.tsv, dev.tsv); default: datasets when online")
    p.add_argument("--task-files", type=Path, metavar="JSON", help=(
        "tasks from CSV/TSV/JSONL files: a JSON list, one object per adapter, {train, eval, text, label, labels} "
        "for a label task or {train, eval, text, reference} for a generative task (ROUGE-1)"))
    p.add_argument("--calibration", type=int, default=128, help="GLUE: calibration examples per task")
    p.add_argument("--eval-size", type=int, default=0, help="GLUE: evaluation examples per task (0: all)")
    p.add_argument("--family", choices=["classifier", "seq2seq", "causal"], help="model family (default: detected)")
    p.add_argument("--base-path", help="local folder of the base model when the adapters name a hub id")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--workspace", type=Path, help="run store folder (default: ./workspace or $MERGECORE_WORKSPACE)")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")


def open_bench(args):
    from mergecore.adapters import load_adapters
    from mergecore.demo.kit import demo_adapter_dirs, tasks_for
    from mergecore.forward.workbench import open_workbench

    dirs = args.adapters or demo_adapter_dirs()
    adapters = load_adapters(dirs, allow_bin=args.allow_bin, base_model=args.base_model)
    if args.glue is not None:
        from mergecore.data.glue import GlueParams, load_glue, match_tasks

        params = GlueParams(calibration=args.calibration, evaluation=args.eval_size)
        tasks = load_glue(args.glue or match_tasks(adapters.names), source=args.glue_dir or "auto", params=params)
    elif args.task_files is not None:
        tasks = _file_tasks(adapters.names, args.task_files)
    else:
        tasks = tasks_for(adapters.names)
    bench = open_workbench(adapters, tasks, device=args.device, trust_remote_code=args.trust_remote_code,
                           family=args.family, base_path=args.base_path)
    bench.task_source = task_source(args, bench)  # recorded in run configs: `--run` reuses it
    return bench


def task_source(args, bench) -> dict:
    """Where a bench's tasks came from (recorded in run configs by ``runner.bench_config``)."""
    from mergecore.data.glue import glue_source
    from mergecore.data.taskfiles import files_source

    if args.glue is not None:
        return glue_source(bench.tasks.names, args.glue_dir, args.calibration, args.eval_size)
    if args.task_files is not None:
        return files_source(args.task_files)
    return {"kind": "demo"}


def _file_tasks(names: list[str], path: Path):
    import json

    from mergecore.errors import MergecoreError
    from mergecore.data.taskfiles import tasks_from_specs

    try:
        specs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MergecoreError(f"cannot read the task mapping {path} ({type(exc).__name__}); check the path") from None
    except json.JSONDecodeError as exc:
        raise MergecoreError(f"{path} is not valid JSON ({exc.msg}); give a list with one object per adapter") from None
    return tasks_from_specs(names, specs, base_dir=path.parent, source=path)  # paths relative to the JSON file


def open_store(args):
    from mergecore.runs.store import RunStore

    return RunStore(args.workspace)


# ----------------------------------------------------------------------------- tables


def score_table(columns: dict[str, dict[str, float]], experts: dict[str, float] | None = None) -> str:
    """Tasks as rows, one column per merge, plus average (and ANP vs the experts); undefined numbers print '-'."""
    from mergecore.forward.evaluate import anp, average
    from mergecore.numbers import fmt

    tasks = list(next(iter(columns.values())))
    names = list(columns)
    width = max(14, *(len(t) for t in tasks))
    lines = [f"{'task':{width}s}" + "".join(f"{n[:14]:>15s}" for n in names)]
    for t in tasks:
        lines.append(f"{t:{width}s}" + "".join(f"{fmt(columns[n].get(t)):>15s}" for n in names))
    lines.append(f"{'average':{width}s}" + "".join(f"{fmt(average(columns[n])):>15s}" for n in names))
    if experts:
        lines.append(f"{'ANP':{width}s}" + "".join(f"{fmt(anp(columns[n], experts), 3):>15s}" for n in names))
    return "\n".join(lines)


def compact(coefs: list) -> list:
    """Task-wise coefficients as one row (K,) instead of L identical rows."""
    return coefs[0] if coefs and all(row == coefs[0] for row in coefs) else coefs


def emit_json(obj: dict) -> None:
    """One JSON object on stdout; undefined numbers (NaN, inf) are null, never a bare NaN."""
    from mergecore.numbers import dumps

    print(dumps(obj, default=float))


# ----------------------------------------------------------------------------- commands


def cmd_learn(args) -> int:
    from mergecore.learn.learner import LearnParams, apply_preset
    from mergecore.runs.runner import run_learning

    params = dataclass_from_args(LearnParams, args, apply_preset(LearnParams(), args.preset)).validate()
    t0 = time.perf_counter()
    bench = open_bench(args)
    store = open_store(args)
    bar = _progress(params.steps, args.json)

    def on_event(kind, step, payload):
        if kind == "step" and bar is not None:
            bar.set_postfix(loss=f"{payload['loss']:.4f}")
            bar.update(1)

    run_id, result = run_learning(bench, params, store, name=args.name, on_event=on_event)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if args.out:
        write_run_folder(args.out, store, run_id)
    base = result["baselines"]
    print(score_table({"pre-trained": base["pre-trained"], "experts": base["experts"], "uniform": base["uniform"],
                       f"{params.objective}-{params.granularity}": result["scores"]}, base["experts"]))
    print(f"run {run_id} ({result['status']}) in {seconds:.1f} s; stored in {store.path}"
          + (f"; written to {args.out}" if args.out else ""))
    if result["message"]:
        print(result["message"], file=sys.stderr)
    if args.json:
        emit_json({"run": result["scores"], "uniform": result["uniform"], "coefficients": compact(result.get("coefs") or []) or None,  # spectral runs: gains, no (L, K) coefficients
                   "run_id": run_id, "status": result["status"], "seconds": seconds})
    return 0 if result["status"] == "done" else 1


def cmd_eval(args) -> int:
    from mergecore.runs.runner import cached_baselines

    t0 = time.perf_counter()
    bench = open_bench(args)
    base = cached_baselines(bench, open_store(args))
    print(score_table(base, base["experts"]))
    if args.json:
        emit_json({"uniform": base["uniform"], "experts": base["experts"], "pre-trained": base["pre-trained"],
                   "seconds": time.perf_counter() - t0})
    return 0


def cmd_runs(args) -> int:
    from mergecore.numbers import fmt

    store = open_store(args)
    for r in store.list():
        avg = f"avg {fmt(r.result['average']):>6s}" if "average" in r.result else ""
        print(f"{r.id}  {r.kind:9s} {r.status:11s} {r.name:24s} " + avg)
    return 0


def write_run_folder(out: Path, store, run_id: str) -> None:
    """run.json (config + result), events.jsonl and coefs.safetensors, written atomically."""
    import shutil

    from mergecore.numbers import dumps

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rec = store.get(run_id)
    (tmp / "run.json").write_text(dumps({"id": rec.id, "name": rec.name, "kind": rec.kind, "status": rec.status,
                                         "config": rec.config, "result": rec.result}, indent=2, default=float))
    with open(tmp / "events.jsonl", "w") as f:
        for e in store.events(run_id):
            f.write(dumps(e) + "\n")
    for artifact in store.artifacts(run_id):  # coefs, merged (static / spectral), spectral gains
        (tmp / f"{artifact}.safetensors").write_bytes(store.get_blob(run_id, artifact))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _progress(total: int, quiet: bool):
    if quiet and not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="learning", unit="step", file=sys.stderr)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from mergecore.learn.learner import PRESETS, LearnParams

    ap = argparse.ArgumentParser(prog="python -m mergecore", description="Merge LoRA adapters and look inside the result.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("learn", help="learn merge coefficients")
    add_source_args(p)
    add_dataclass_args(p, LearnParams)
    p.add_argument("--preset", choices=list(PRESETS), help="load a paper's hyperparameters (explicit flags win)")
    p.add_argument("--name", help="run name")
    p.add_argument("--out", type=Path, help="also write the run to this folder")
    p.set_defaults(fn=cmd_learn)
    p = sub.add_parser("eval", help="pre-trained / experts / uniform scores")
    add_source_args(p)
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--workspace", type=Path)
    p.set_defaults(fn=cmd_runs)
    for register in EXTRA_COMMANDS:
        register(sub)
    return ap


EXTRA_COMMANDS: list = []  # other modules append parser registrations (merge, compare, export, analyze)


def main(argv: list[str] | None = None) -> None:
    from mergecore import cli_analyze, cli_export, cli_extra  # noqa: F401  (register the remaining commands)

    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except MergecoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
