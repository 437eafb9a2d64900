"""Each bench script runs end to end with --smoke (tiny shapes, one repeat) and prints one JSON
object last on stdout with its figures. Timings themselves are never asserted (they live in
docs/perf/); only that the scripts run and that their built-in agreement checks hold."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *extra: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke", "--device", "cpu", "--json", *extra],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_learn_step_smoke():
    d = run_bench("learn_step.py", "--granularities", "task,layer,task_fast")
    assert d["floor_ms"] > 0 and set(d["ours_ms"]) == {"task", "layer", "task_fast"}
    assert d["materialized_ms"] > 0 and d["ratio_to_floor"]["task"] > 0
    # the factored learner and the materialising reference compute the same coefficient gradient
    assert d["grad_rel_diff_ours_vs_materialized"] < 1e-3


def test_memory_smoke():
    d = run_bench("memory.py")
    methods = {r["method"] for r in d["rows"]}
    assert methods == {"floor", "ours/task", "ours/layer", "materialized", "materialized_dense"}
    assert all(r["ms"] > 0 for r in d["rows"]) and "2" in d["summary"]


def test_stage1_smoke():
    d = run_bench("stage1.py")
    assert d["routed_ms"] > 0 and d["separate_ms"] > 0
    assert d["rel_diff_routed_vs_separate"] < 1e-4 and d["rel_diff_cached_vs_separate"] < 1e-4


@pytest.mark.parametrize("script", ["spectra_svd.py"])
def test_spectra_smoke(script):
    d = run_bench(script)
    row = d["rows"][0]
    assert row["task_factors_ms"] > 0 and row["merged_dense_ms"] > 0
    assert row["task_rel_diff"] < 1e-4 and row["merged_rel_diff"] < 1e-4
