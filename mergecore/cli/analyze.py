"""``analyze``: ``python -m mergecore analyze --run ID --what spectra|subspaces|divergence|
representation|calibration --out DIR`` writes <what>.json (the whole lens) and CSV tables."""

from __future__ import annotations

import csv
from pathlib import Path

import math

from mergecore.analysis import forward_lenses as fl
from mergecore.analysis import lenses
from mergecore.analysis.lenses import LENSES, LensParams, describe_mean, offdiag_summary
from mergecore.cli.common import (add_dataclass_args, add_source_args, dataclass_from_args, emit_json, open_bench,
                                  open_store, run_sources)
from mergecore.errors import MergecoreError
from mergecore.numbers import dumps
from mergecore.runs.folder import run_store

NEEDS_RUN = ("representation", "calibration")


def compute_lens(what: str, bench, store, run_id: str | None, params) -> dict:
    if what in NEEDS_RUN and not run_id:
        raise MergecoreError(f"--what {what} compares a run with its experts; pass --run ID (see `runs`)")
    if run_id:
        store.get(run_id)  # a clear error for an unknown id
    fn = {"spectra": lambda: lenses.spectra_lens(bench, store, run_id, params),
          "subspaces": lambda: lenses.subspaces_lens(bench, store, params),
          "divergence": lambda: fl.divergence_lens(bench, store, params),
          "representation": lambda: fl.representation_lens(bench, store, run_id, params),
          "calibration": lambda: fl.calibration_lens(bench, store, run_id, params)}[what]
    return fn()


def lens_tables(what: str, lens: dict) -> dict[str, list[dict]]:
    """Flat CSV tables of a lens result: {file stem: rows}."""
    tasks = lens.get("tasks", [])
    if what == "spectra":
        values = [{"module": m, "model": who, "index": n, "singular_value": s}
                  for m, per in lens["spectra"].items() for who, sv in per.items() for n, s in enumerate(sv)]
        return {"spectra_summary": lens["rows"], "spectra_values": values}
    if what == "subspaces":
        rows = [{"module": m, "lens": key, "task_i": tasks[i], "task_j": tasks[j], "value": v}
                for key in ("b_overlap", "a_overlap", "cosine", "interference")
                for m, M in lens[key].items() for i, row in enumerate(M) for j, v in enumerate(row)]
        return {"subspaces": rows}
    if what == "divergence":
        rows = [{"task_i": ti, "model_j": tj, "js": lens["js"][i][j], "kl": lens["kl"][i][j], "score": lens["scores"][i][j]}
                for i, ti in enumerate(tasks) for j, tj in enumerate(tasks)]
        return {"divergence": rows}
    if what == "representation":
        return {"representation": [{"task": t, "layer": layer, "bias": b} for t in tasks
                                   for layer, b in zip(lens["layers"], lens["bias"][t])]}
    summary = [{"task": t, **{k: v for k, v in lens["summary"][t].items()},
                **{f"expert_{k}": v for k, v in lens["expert_summary"][t].items() if k != "agreement"}} for t in tasks]
    return {"calibration_summary": summary, "calibration_examples": lens["examples"]}


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def run(args) -> int:
    params = dataclass_from_args(LensParams, args).validate()
    if args.what in NEEDS_RUN and not args.run:
        raise MergecoreError(f"--what {args.what} compares a run with its experts; pass --run ID (see `runs`)")
    store, run_id = open_store(args), None
    if args.run:  # an id or a run folder; unknown id: one-line error before loading the model
        store, run_id = run_store(args.run, store)
        run_sources(args.run, store, args)  # the run's adapters and tasks unless given
    bench = open_bench(args)
    lens = compute_lens(args.what, bench, store, run_id, params)
    tables = lens_tables(args.what, lens)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.what}.json").write_text(dumps(lens, indent=1))  # NaN (undefined) -> null
        for stem, rows in tables.items():
            write_csv(args.out / f"{stem}.csv", rows)
        print(f"{args.what}: wrote {args.what}.json and {', '.join(s + '.csv' for s in tables)} to {args.out}")
    for line in skipped_lines(lens):
        print(line)
    print(headline(args.what, lens))
    if args.json:
        emit_json({"what": args.what, "run": args.run, "headline": headline(args.what, lens), "out": str(args.out or ""),
                   "skipped": lens.get("skipped", [])})
    return 0


def headline(what: str, lens: dict) -> str:
    """One-paragraph text summary printed after an analysis."""
    tasks = lens.get("tasks", [])
    if what == "spectra":
        runs = [r for r in lens["rows"] if r["kind"] == "run"] or lens["rows"]
        mean = sum(r["effective_rank"] for r in runs) / max(len(runs), 1)
        return f"spectra of {len(lens['modules'])} modules; mean effective rank ({runs[0]['kind'] if runs else '-'}) {mean:.2f}"
    if what == "subspaces":
        summary = lens.get("summary") or {k: offdiag_summary(lens[k], lens["modules"])
                                          for k in ("b_overlap", "a_overlap", "interference")}
        text = (f"mean off-diagonal overlap: B spaces {describe_mean(summary['b_overlap'])}, "
                f"A spaces {describe_mean(summary['a_overlap'])}")
        if summary["interference"]["total"]:
            text += f"; OSRM interference {describe_mean(summary['interference'])}"
        return text
    if what == "divergence":
        return f"Spearman(divergence, score drop): JS {_num(lens['spearman_js'])}, KL {_num(lens['spearman_kl'])}"
    if what == "representation":
        return "representation bias (mean over layers): " + ", ".join(f"{t} {_num(lens['mean'][t], 4)}" for t in tasks)
    o = lens["overall"]
    return (f"ECE {_num(o['ece'])}, confidently wrong {_num(100 * o['confidently_wrong'], 1)}%, "
            f"agreement with the experts {_num(100 * o['agreement'], 1)}%, accuracy {_num(100 * o['accuracy'], 1)}%")


def _num(x, digits: int = 3) -> str:
    """A figure, or 'undefined' for NaN / None (e.g. a Spearman over fewer than 3 finite pairs)."""
    return "undefined" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def skipped_lines(lens: dict) -> list[str]:
    """One line per task a lens left out (generative tasks), with the reason."""
    return [f"skipped {s['task']}: {s['reason']}" for s in lens.get("skipped", [])]


def register(sub) -> None:
    p = sub.add_parser("analyze", help="spectra, subspaces, divergence, representation or calibration of a run (CSV/JSON)")
    add_source_args(p)
    p.add_argument("--run", help="run id (see `runs`) or a run folder (`merge/learn --out`); needed for representation "
                                 "and calibration; its adapters and tasks are reused unless given")
    p.add_argument("--what", required=True, choices=LENSES, help="which analysis")
    p.add_argument("--out", type=Path, help="folder for <what>.json and CSV tables")
    add_dataclass_args(p, LensParams)
    p.set_defaults(fn=run)

