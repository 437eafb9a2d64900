"""CLI command 'analyze': ``python -m mergecore analyze --run ID --what spectra|subspaces|divergence|
representation|calibration --out DIR`` writes <what>.json (the whole lens) and CSV tables."""

from __future__ import annotations

import csv
from pathlib import Path

from .cli import EXTRA_COMMANDS, add_dataclass_args, add_source_args, dataclass_from_args, emit_json, open_bench, open_store
from .errors import MergecoreError
from .numbers import dumps

NEEDS_RUN = ("representation", "calibration")


def compute_lens(what: str, bench, store, run_id: str | None, params) -> dict:
    from .analysis import forward_lenses as fl
    from .analysis import lenses

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


def cmd_analyze(args) -> int:
    from .analysis.lenses import LensParams

    params = dataclass_from_args(LensParams, args).validate()
    if args.what in NEEDS_RUN and not args.run:
        raise MergecoreError(f"--what {args.what} compares a run with its experts; pass --run ID (see `runs`)")
    store = open_store(args)
    if args.run:
        store.get(args.run)  # unknown id: one-line error before loading the model
    bench = open_bench(args)
    lens = compute_lens(args.what, bench, store, args.run, params)
    tables = lens_tables(args.what, lens)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.what}.json").write_text(dumps(lens, indent=1))  # NaN (undefined) -> null
        for stem, rows in tables.items():
            write_csv(args.out / f"{stem}.csv", rows)
        print(f"{args.what}: wrote {args.what}.json and {', '.join(s + '.csv' for s in tables)} to {args.out}")
    print(headline(args.what, lens))
    if args.json:
        emit_json({"what": args.what, "run": args.run, "headline": headline(args.what, lens), "out": str(args.out or "")})
    return 0


def headline(what: str, lens: dict) -> str:
    """One-paragraph text summary printed after an analysis."""
    tasks = lens.get("tasks", [])
    if what == "spectra":
        runs = [r for r in lens["rows"] if r["kind"] == "run"] or lens["rows"]
        mean = sum(r["effective_rank"] for r in runs) / max(len(runs), 1)
        return f"spectra of {len(lens['modules'])} modules; mean effective rank ({runs[0]['kind'] if runs else '-'}) {mean:.2f}"
    if what == "subspaces":
        from .analysis.lenses import aggregate

        def off(M):
            return sum(M[i][j] for i in range(len(M)) for j in range(len(M)) if i != j) / max(len(M) * (len(M) - 1), 1)

        b, a = aggregate(lens["b_overlap"], lens["modules"]), aggregate(lens["a_overlap"], lens["modules"])
        return f"mean off-diagonal overlap over modules: B spaces {off(b):.3f}, A spaces {off(a):.3f}"
    if what == "divergence":
        return f"Spearman(divergence, score drop): JS {lens['spearman_js']:.3f}, KL {lens['spearman_kl']:.3f}"
    if what == "representation":
        return "representation bias (mean over layers): " + ", ".join(f"{t} {lens['mean'][t]:.4f}" for t in tasks)
    o = lens["overall"]
    return (f"ECE {o['ece']:.3f}, confidently wrong {100 * o['confidently_wrong']:.1f}%, "
            f"agreement with the experts {100 * o['agreement']:.1f}%, accuracy {100 * o['accuracy']:.1f}%")


def register_analyze(sub) -> None:
    from .analysis.lenses import LENSES, LensParams

    p = sub.add_parser("analyze", help="spectra, subspaces, divergence, representation or calibration of a run (CSV/JSON)")
    add_source_args(p)
    p.add_argument("--run", help="run id (see `runs`); needed for representation and calibration")
    p.add_argument("--what", required=True, choices=LENSES, help="which analysis")
    p.add_argument("--out", type=Path, help="folder for <what>.json and CSV tables")
    add_dataclass_args(p, LensParams)
    p.set_defaults(fn=cmd_analyze)


EXTRA_COMMANDS.append(register_analyze)
