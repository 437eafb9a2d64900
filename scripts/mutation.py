"""Mutation testing of mergecore's core modules with mutmut (PyPI), in a scratch copy of the tree.

    python scripts/mutation.py                 # every core module against the tests that pin them
    python scripts/mutation.py --modules mergecore/objectives.py --tests tests/test_objectives.py

Copies mergecore/, tests/ and pytest.ini to a temporary folder (the repository's top level stays as it
is), writes mutmut's setup.cfg there, runs ``mutmut run`` (forkserver isolation and one BLAS thread:
torch is not fork-safe with a live thread pool), and prints the killed / survived counts per module and
every mutant that was not killed, as JSON on stdout (``--out FILE`` also writes it). docs/testing.md
records a run and why each survivor is equivalent or which test now kills it.
"""

from __future__ import annotations

import argparse
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
CORE = ["mergecore/adapters.py", "mergecore/peft_config.py", "mergecore/model.py", "mergecore/coefs.py",
        "mergecore/objectives.py", "mergecore/learn.py", "mergecore/merged.py", "mergecore/core_space.py",
        "mergecore/spectral.py", "mergecore/merges", "mergecore/export.py"]
TESTS = ["tests/test_objectives.py", "tests/test_learn_oracle.py", "tests/test_learn.py", "tests/test_model.py",
         "tests/test_gpt2.py", "tests/test_merges.py", "tests/test_export.py", "tests/conformance",
         "tests/reliability/test_bad_input.py"]


def setup_cfg(modules: list[str], tests: list[str]) -> str:
    lines = ["[mutmut]", "source_paths=", *[f"    {m}" for m in modules],
             "pytest_add_cli_args_test_selection=", *[f"    {t}" for t in tests],
             "process_isolation=forkserver", "also_copy=", "    mergecore", "    tests", "    pytest.ini"]
    return "\n".join(lines) + "\n"


def run(modules: list[str], tests: list[str], children: int) -> Path:
    work = Path(tempfile.mkdtemp(prefix="mergecore-mutation-"))
    for name in ("mergecore", "tests"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pytest.ini", work / "pytest.ini")
    (work / "setup.cfg").write_text(setup_cfg(modules, tests))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children)], cwd=work, env=env,
                   stdout=subprocess.DEVNULL, check=False)
    return work


def summarize(work: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                         capture_output=True, text=True, check=False).stdout
    per_module: dict[str, Counter] = defaultdict(Counter)
    not_killed = []
    for line in out.splitlines():
        hit = re.match(r"\s*(mergecore\.[\w.]+?)\.x[_ǁ]\S*?__mutmut_\d+: (.+)$", line)  # ǁ: a method
        if not hit:
            continue
        module, status = hit.group(1), hit.group(2).strip()
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
    args = ap.parse_args()
    work = run(args.modules, args.tests, args.children)
    result = {"work": str(work), **summarize(work)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
