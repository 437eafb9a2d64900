"""Mutation testing of mergecore's core modules with mutmut (PyPI), in a scratch copy of the tree.

    python scripts/mutation.py                 # every core module against the tests that pin them
    python scripts/mutation.py --modules mergecore/divergences.py --tests tests/test_objectives.py
    python scripts/mutation.py --work /tmp/mut-obj --rerun ...   # reuse a folder: only changed functions,
                                                                 # unchecked mutants and the not-killed rerun
    python scripts/mutation.py --work /tmp/mut-obj --rerun --only 'mergecore.files.*' ...
                                                  # retry only the not-killed mutants matching these patterns

Copies mergecore/, tests/, the app and pytest.ini to a temporary folder (the repository's top level stays as it
is), writes mutmut's setup.cfg there, runs ``mutmut run`` (forkserver isolation and one BLAS thread:
torch is not fork-safe with a live thread pool), and prints the killed / survived counts per module and
every mutant that was not killed, as JSON on stdout (``--out FILE`` also writes it). docs/testing.md
records a run and why each survivor is equivalent or which test now kills it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ["mergecore/adapters.py", "mergecore/peft_config.py", "mergecore/forward/model.py", "mergecore/forward/coefs.py",
        "mergecore/forward/spectral.py", "mergecore/divergences.py", "mergecore/learn", "mergecore/merged.py",
        "mergecore/core_space.py", "mergecore/merges", "mergecore/export", "mergecore/files.py", "mergecore/runs/folder.py"]
TESTS = ["tests/test_objectives.py", "tests/test_learn_oracle.py", "tests/test_learn.py", "tests/test_learn_units.py",
         "tests/test_learn_run.py", "tests/test_model.py", "tests/test_gpt2.py", "tests/test_adapters.py",
         "tests/test_peft_config.py", "tests/test_coefs.py", "tests/test_core_space.py", "tests/test_spectral.py",
         "tests/test_merged.py", "tests/test_merges.py", "tests/test_merges_edges.py", "tests/test_export.py",
         "tests/test_export_card.py", "tests/test_export_families.py", "tests/conformance",
         "tests/reliability/test_bad_input.py"]


TREES = ("mergecore", "tests", "pages", ".streamlit")  # the app too: AppTest tests open app.py and its pages
FILES = ("pytest.ini", "app.py")


def setup_cfg(modules: list[str], tests: list[str]) -> str:
    lines = ["[mutmut]", "source_paths=", *[f"    {m}" for m in modules],
             "pytest_add_cli_args_test_selection=", *[f"    {t}" for t in tests],
             "process_isolation=forkserver", "also_copy=", *[f"    {name}" for name in (*TREES, *FILES)]]
    return "\n".join(lines) + "\n"


def prepare(work: Path | None, modules: list[str], tests: list[str]) -> Path:
    """A scratch folder holding the current mergecore/, tests/, the app (app.py, pages/, .streamlit/) and pytest.ini; mutmut's state under
    ``mutants/`` is kept when ``work`` is reused, so only functions whose source changed are re-mutated."""
    work = work or Path(tempfile.mkdtemp(prefix="mergecore-mutation-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in TREES:
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in FILES:
        shutil.copy(ROOT / name, work / name)
    (work / "setup.cfg").write_text(setup_cfg(modules, tests))
    return work


def mutmut(work: Path, args: list[str], children: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *args], cwd=work,
                   env=env, stdout=subprocess.DEVNULL, check=False)


def dotted(modules: list[str]) -> tuple[str, ...]:
    return tuple(m.removesuffix(".py").replace("/", ".") for m in modules)


def summarize(work: Path, modules: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                         capture_output=True, text=True, check=False).stdout
    per_module: dict[str, Counter] = defaultdict(Counter)
    not_killed = []
    for line in out.splitlines():
        hit = re.match(r"\s*(mergecore\.[\w.]+?)\.x[_ǁ]\S*?__mutmut_\d+: (.+)$", line)  # ǁ: a method
        if not hit:
            continue
        module, status = hit.group(1), hit.group(2).strip()
        if not module.startswith(dotted(modules)):
            continue
        per_module[module][status] += 1
        if status != "killed":
            not_killed.append({"mutant": line.split(":")[0].strip(), "status": status})
    table = {m: {**c, "total": sum(c.values()), "score": round(c["killed"] / max(sum(c.values()), 1), 4)}
             for m, c in sorted(per_module.items())}
    return {"modules": table, "not_killed": not_killed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", nargs="+", default=CORE)
    ap.add_argument("--tests", nargs="+", default=TESTS)
    ap.add_argument("--children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, help="reuse this scratch folder (created if missing)")
    ap.add_argument("--rerun", action="store_true", help="then rerun every mutant not killed (after new tests)")
    ap.add_argument("--only", nargs="+", metavar="PATTERN",
                    help="with --rerun: retry only the not-killed mutants whose names match these fnmatch patterns "
                         "(e.g. 'mergecore.runs.folder.*'), without first running the rest of the unchecked ones")
    args = ap.parse_args()
    if args.only and not args.rerun:
        ap.error("--only goes with --rerun")
    work = prepare(args.work, args.modules, args.tests)
    if not args.only:
        mutmut(work, [], args.children)
    if args.rerun:
        names = [m["mutant"] for m in summarize(work, args.modules)["not_killed"]]
        if args.only:
            names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in args.only)]
        for i in range(0, len(names), 500):
            mutmut(work, names[i:i + 500], args.children)
    result = {"work": str(work), **summarize(work, args.modules)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
