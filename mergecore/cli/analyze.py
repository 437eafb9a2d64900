"""``analyze``: ``python -m mergecore analyze --run ID --what spectra|subspaces|divergence|representation|
calibration --out DIR`` writes <what>.json (the whole lens) and CSV tables (the lenses: ``analysis.catalog``)."""

from __future__ import annotations

import csv
from pathlib import Path

from mergecore.analysis.catalog import LENSES, compute_lens, get_lens, headline, lens_tables, skipped_lines
from mergecore.analysis.lenses import LensParams
from mergecore.cli.common import add_source_args, emit_json, open_store, run_spec
from mergecore.cli.flags import add_dataclass_args, dataclass_from_args
from mergecore.cli.targets import check_out, protected
from mergecore.errors import MergecoreError
from mergecore.files import atomic_folder
from mergecore.numbers import dumps
from mergecore.forward.spec import RunSpec
from mergecore.runs.folder import open_run


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def run(args) -> int:
    params = dataclass_from_args(LensParams, args).validate()
    if get_lens(args.what).needs_run and not args.run:
        raise MergecoreError(f"--what {args.what} compares a run with its experts; pass --run ID (see `runs`)")
    check_out(args, run_spec(args), "analysis target")  # before anything is opened
    store, run_id, recorded = open_store(args), None, None
    if args.run:  # an id or a run folder, read once; unknown id: one-line error before loading the model
        store, rec = open_run(args.run, store)
        run_id, recorded = rec.id, RunSpec.from_record(rec.config)
    spec = run_spec(args, recorded)  # the run's adapters and tasks unless given
    check_out(args, spec, "analysis target")  # before anything is loaded; the run's own inputs protected
    bench = spec.open()
    lens = compute_lens(args.what, bench, store, run_id, params)
    tables = lens_tables(args.what, lens)
    if args.out:
        with atomic_folder(args.out, args.force, protected(args, spec), "analysis target") as tmp:
            (tmp / f"{args.what}.json").write_text(dumps(lens, indent=1))  # NaN (undefined) -> null
            for stem, rows in tables.items():
                write_csv(tmp / f"{stem}.csv", rows)
        print(f"{args.what}: wrote {args.what}.json and {', '.join(s + '.csv' for s in tables)} to {args.out}")
    for line in skipped_lines(lens):
        print(line)
    print(headline(args.what, lens))
    if args.json:
        emit_json({"what": args.what, "run": args.run, "headline": headline(args.what, lens), "out": str(args.out or ""),
                   "skipped": lens.get("skipped", [])})
    return 0


def register(sub) -> None:
    p = sub.add_parser("analyze", help="spectra, subspaces, divergence, representation or calibration of a run (CSV/JSON)")
    add_source_args(p)
    p.add_argument("--run", help="run id (see `runs`) or a run folder (`merge/learn --out`); needed for representation "
                                 "and calibration; its adapters and tasks are reused unless given")
    p.add_argument("--what", required=True, choices=LENSES, help="which analysis")
    p.add_argument("--out", type=Path, help="folder for <what>.json and CSV tables (new or empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder that mergecore wrote")
    add_dataclass_args(p, LensParams)
    p.set_defaults(fn=run)

