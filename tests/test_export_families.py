"""Export per model family (causal LM, seq2seq LM, classifier), compressed export with a generative task,
and `--run` reusing a run's adapters and task sources (export, analyze) from a run folder."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from test_verbalizer import SENTS, TINY, make_adapters, tasks

from mergecore.adapters import load_adapters
from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.export.params import ExportParams
from mergecore.export.writer import export_run
from mergecore.forward.model import Segments
from mergecore.forward.spec import bench_config
from mergecore.merged import MergedSource
from mergecore.merges.registry import merge_adapters
from mergecore.runs.folder import RunSource

pytestmark = [pytest.mark.skipif(not TINY.is_dir(), reason="tiny-random checkpoints not found in /work/shared/data"),
              pytest.mark.usefixtures("one_thread")]
RTOL = 1e-5



def lm_bench(name: str, root, with_generative: bool = False):
    """A Workbench on a tiny-random LM (base read from its folder) with two PEFT adapters, and a
    task-arithmetic run of them."""
    from mergecore.forward.workbench import open_workbench

    ts = tasks()
    if with_generative:
        gen = Task("gen", (), Split(tuple((s,) for s in SENTS[:4])), Split(tuple((s,) for s in SENTS[2:5])),
                   metric="rouge1", prompt="Summary of: {0}\n")
        ts = TaskSet((ts[0], gen))
    bench = open_workbench(load_adapters(make_adapters(name, root)), ts, device="cpu")
    merge = merge_adapters(bench.adapters, "task_arithmetic")
    return bench, RunSource("run-1", "ta", "static", bench_config(bench), {}, merge)


@torch.no_grad()
def merged_logits(bench, run, inputs: dict) -> torch.Tensor:
    """mergecore's merged forward (MergeModel + MergedSource) on one unpadded example."""
    bench.model.set_source(MergedSource(run.merge, bench.device))
    return bench.model(Segments([(0, 0, 1)]), **inputs).logits.float()


def lm_inputs(bench, text: str) -> dict:
    enc = bench.reader.tokenizer([text], return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if bench.reader.family == "seq2seq":
        start = bench.model.model.config.decoder_start_token_id
        inputs["decoder_input_ids"] = torch.tensor([[start] + enc["input_ids"][0, :3].tolist()])
    return inputs


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def check_card_files(folder) -> dict:
    """Every file the card and the README name exists."""
    card = json.loads((folder / "merge_card.json").read_text())
    readme = (folder / "README.md").read_text()
    for name in card["files"]:
        assert (folder / name).is_file(), name
    for name in re.findall(r"`([\w./-]+\.(?:json|safetensors|md|txt|model))`", readme):
        assert (folder / name).is_file(), name
    return card


def run_readme_snippet(folder, monkeypatch) -> dict:
    """Execute the README's loading snippet as a user would, from the folder that holds the export (the
    snippet names the export folder relatively); returns the snippet's variables."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(folder.parent)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return lm_bench("llama", tmp_path_factory.mktemp("llama"), with_generative=True)


def test_causal_full_weights_are_a_causal_lm(llama, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    bench, run = llama
    res = export_run(bench, run, tmp_path / "full", ExportParams(mode="full"))
    model = AutoModelForCausalLM.from_pretrained(res.path).eval()
    assert model.get_output_embeddings() is not None and not (res.path / "heads").exists()
    for text in SENTS[:3]:
        inputs = lm_inputs(bench, text)
        with torch.no_grad():
            got = model(**inputs).logits.float()
        assert rel_err(got, merged_logits(bench, run, inputs)) <= RTOL
    card = check_card_files(res.path)
    assert card["export"]["family"] == "causal" and card["export"]["head"] is None
    assert "AutoModelForCausalLM" in card["snippet"] and "SequenceClassification" not in card["snippet"]
    scope = run_readme_snippet(res.path, monkeypatch)  # loads the folder alone (no PEFT, no base), generates
    assert "peft" not in card["snippet"] and scope["text"] and type(scope["model"]).__name__ == "LlamaForCausalLM"
    inputs = lm_inputs(bench, SENTS[0])
    with torch.no_grad():
        got = scope["model"](**inputs).logits.float()
    assert rel_err(got, merged_logits(bench, run, inputs)) <= RTOL


def test_causal_adapter_snippet_runs_and_matches(llama, tmp_path, monkeypatch):
    bench, run = llama
    res = export_run(bench, run, tmp_path / "merged")
    card = check_card_files(res.path)
    readme = (res.path / "README.md").read_text()
    assert "heads/" not in readme and "use_head" not in card["snippet"] and "SequenceClassification" not in readme
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    code = re.sub(r"^BASE = .*$", f"BASE = {str(TINY / 'llama')!r}", code, flags=re.M)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # loads with transformers + PEFT, then generates
    assert scope["text"] and type(scope["model"].get_base_model()).__name__ == "LlamaForCausalLM"
    inputs = lm_inputs(bench, SENTS[0])
    with torch.no_grad():
        got = scope["model"](**inputs).logits.float()
    assert rel_err(got, merged_logits(bench, run, inputs)) <= RTOL


def test_compressed_with_a_generative_task_reports_label_tasks_only(llama, tmp_path):
    bench, run = llama
    res = export_run(bench, run, tmp_path / "c", ExportParams(mode="compressed", rank=1, samples=4))
    change = res.card["export"]["probability_change"]
    assert change["left_out"] == ["gen"] and list(change["per_task"]) == ["sentiment"]
    assert change["max"] == change["per_task"]["sentiment"] >= 0
    assert "left out" in (res.path / "README.md").read_text()
    check_card_files(res.path)


def test_seq2seq_full_weights_are_a_seq2seq_lm(tmp_path, monkeypatch):
    from transformers import AutoModelForSeq2SeqLM

    bench, run = lm_bench("t5", tmp_path / "adapters")
    res = export_run(bench, run, tmp_path / "full", ExportParams(mode="full"))
    model = AutoModelForSeq2SeqLM.from_pretrained(res.path).eval()
    for text in SENTS[:2]:
        inputs = lm_inputs(bench, text)
        with torch.no_grad():
            got = model(**inputs).logits.float()
        assert rel_err(got, merged_logits(bench, run, inputs)) <= RTOL
    card = check_card_files(res.path)
    assert card["export"]["family"] == "seq2seq" and "AutoModelForSeq2SeqLM" in card["snippet"]
    scope = run_readme_snippet(res.path, monkeypatch)
    assert "peft" not in card["snippet"] and isinstance(scope["text"], list)
    assert type(scope["model"]).__name__ == "T5ForConditionalGeneration"
    inputs = lm_inputs(bench, SENTS[0])
    with torch.no_grad():
        got = scope["model"](**inputs).logits.float()
    assert rel_err(got, merged_logits(bench, run, inputs)) <= RTOL


def test_classifier_full_weights_carry_the_chosen_head(tiny_setup, tmp_path):
    from test_learn import tiny_bench
    from transformers import AutoModelForSequenceClassification

    bench = tiny_bench(tiny_setup)
    run = RunSource("run-2", "ta", "static", bench_config(bench), {}, merge_adapters(bench.adapters, "task_arithmetic"))
    res = export_run(bench, run, tmp_path / "full", ExportParams(mode="full", head="beta"))
    model = AutoModelForSequenceClassification.from_pretrained(res.path).eval()
    k = bench.tasks.names.index("beta")
    enc = bench.encoded(k, "calibration")
    bench.model.set_source(MergedSource(run.merge))
    segments, inputs = bench.reader.batch([(k, enc, torch.arange(len(enc)))], bench.device)
    with torch.no_grad():
        want = bench.reader.label_logits(bench.model, segments, inputs)[0]
        got = model(**enc.tensors).logits.float()
    assert got.shape == want.shape and rel_err(got, want) <= RTOL
    card = check_card_files(res.path)
    assert card["export"]["family"] == "classifier" and "AutoModelForSequenceClassification" in card["snippet"]


# ----------------------------------------------------------------------------- --run reuses the run's sources


def _main(args, capsys) -> tuple[int, str, str]:
    from mergecore.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_run_folder_reuses_adapters_and_task_files(tmp_path, capsys):
    from conftest import label_task_files, make_adapter, tiny_bert_base

    base = tiny_bert_base(tmp_path / "base")
    dirs = [make_adapter(base, tmp_path / "a0", 2, 2, ["query", "value"], seed=1),
            make_adapter(base, tmp_path / "a1", 3, 2, ["query", "value"], seed=2)]
    data = tmp_path / "data"
    label_task_files(data)
    ws, run = tmp_path / "ws", tmp_path / "run"
    code, _, err = _main(["merge", "--adapters", *dirs, "--task-files", data / "tasks.json", "--workspace", ws,
                          "--device", "cpu", "--method", "task_arithmetic", "--out", run], capsys)
    assert code == 0, err
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["task_source"] == {"kind": "files", "path": str((data / "tasks.json").resolve())}
    assert [a["source"] for a in config["adapters"]] == [str(d.resolve()) for d in dirs]

    common = ["--workspace", ws, "--device", "cpu"]
    code, out, err = _main(["export", "--run", run, "--out", tmp_path / "exp", *common], capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "exp" / "merge_card.json").read_text())
    assert [d["fingerprint"] for d in card["data"]] == [t["fingerprint"] for t in config["tasks"]]
    code, out, err = _main(["analyze", "--run", run, "--what", "spectra", *common], capsys)
    assert code == 0, err
    assert "spectra of" in out

    shutil.move(data / "t1.csv", tmp_path / "t1.csv")  # a moved task file
    code, out, err = _main(["export", "--run", run, "--out", tmp_path / "exp2", *common], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--task-files" in err and "t1.csv" in err
    run_id = json.loads((run / "run.json").read_text())["id"]  # by id: the same recorded sources
    code, out, err = _main(["analyze", "--run", run_id, "--what", "spectra", *common], capsys)
    assert code == 2 and "--task-files" in err and not (tmp_path / "exp2").exists()


def test_run_spec_fills_only_what_is_missing(tmp_path):
    """`--run`: the stored run's adapters and task source where the flags give none; the flags win."""
    import argparse

    from mergecore.cli.common import add_source_args, run_spec
    from mergecore.data.sources import TaskSource, record
    from mergecore.errors import MergecoreError
    from mergecore.forward.spec import RunSpec
    from mergecore.runs.folder import open_run

    parser = argparse.ArgumentParser()
    add_source_args(parser)
    glue = tmp_path / "glue"
    glue.mkdir()
    args = parser.parse_args(["--glue", "--glue-dir", str(glue), "--calibration", "16", "--eval-size", "8"])
    src = record(run_spec(args).tasks, TaskSet(tasks()).names)
    assert src == {"kind": "glue", "names": ["sentiment", "topic"], "dir": str(glue.resolve()), "source": None,
                   "calibration": 16, "eval_size": 8}
    run = tmp_path / "run"
    run.mkdir()
    adapters = [{"name": "a", "source": str(tmp_path), "sha256": "0"}]
    (run / "run.json").write_text(json.dumps({"id": "r1", "config": {"adapters": adapters, "task_source": src}}))

    def recorded():
        return RunSpec.from_record(open_run(str(run), None)[1].config)

    fresh = run_spec(parser.parse_args([]), recorded())
    assert ([a.source for a in fresh.adapters], fresh.tasks) == (
        [str(tmp_path)], TaskSource("glue", str(glue.resolve()), ("sentiment", "topic"), 16, 8))
    (tmp_path / "t.json").write_text("[]")
    given = run_spec(parser.parse_args(["--adapters", "x", "--task-files", str(tmp_path / "t.json")]), recorded())
    assert [a.source for a in given.adapters] == ["x"]  # the user's flags win
    assert given.tasks == TaskSource("files", mapping=str(tmp_path / "t.json"))
    glue.rmdir()
    with pytest.raises(MergecoreError, match="GLUE folder .* no longer exists; pass --glue-dir"):
        run_spec(parser.parse_args([]), recorded())
    adapters[0]["source"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps({"id": "r1", "config": {"adapters": adapters}}))
    with pytest.raises(MergecoreError, match="adapter folder .*gone no longer exists; pass --adapters"):
        run_spec(parser.parse_args([]), recorded())


def test_gpt2_full_weights_transpose_into_conv1d(tmp_path):
    """GPT-2 stores Conv1D weights as (in, out): the full-weights model equals PEFT's merge_and_unload."""
    from types import SimpleNamespace

    from conftest import randomize_lora
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from mergecore.export.full import full_model
    from mergecore.merges.base import ModuleMerge

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0,
                     attn_pdrop=0)
    base = tmp_path / "base"
    GPT2LMHeadModel(cfg).save_pretrained(base)
    for f in (TINY / "llama").glob("tokenizer*"):  # any tokenizer: load_base reads one from the base folder
        shutil.copy(f, base / f.name)
    pm = get_peft_model(GPT2LMHeadModel.from_pretrained(base), LoraConfig(r=2, lora_alpha=4, fan_in_fan_out=True,
                                                                        target_modules=["c_attn", "c_proj"]))
    randomize_lora(pm, 0.3)
    pm.save_pretrained(tmp_path / "adapter")
    adapter = load_adapters([tmp_path / "adapter"]).adapters[0]
    merge = {m: ModuleMerge("lora-factors", B=f.scale * f.B, A=f.A) for m, f in adapter.factors.items()}
    bench = SimpleNamespace(family="causal", tasks=TaskSet(tasks()[:1]), base_name=str(base),
                            adapters=None, model=None)
    model, _ = full_model(bench, merge, "sentiment", {})
    reference = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), tmp_path / "adapter").merge_and_unload()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference.eval()(input_ids=ids).logits
        assert rel_err(model.eval()(input_ids=ids).logits, want) <= RTOL


def test_causal_checkpoint_as_a_classifier_exports_a_classifier():
    """A decoder checkpoint used with classification adapters: the full model is its SequenceClassification class
    carrying the chosen head, not the causal LM the checkpoint's config names."""
    from types import SimpleNamespace

    from mergecore.export.full import full_model

    hidden = json.loads((TINY / "llama" / "config.json").read_text())["hidden_size"]
    head = {"score.weight": torch.randn(2, hidden, generator=torch.Generator().manual_seed(0))}
    bench = SimpleNamespace(family="classifier", tasks=TaskSet(tasks()[:1]),
                            base_name=str(TINY / "llama"), adapters=None, model=None)
    model, _ = full_model(bench, {}, "sentiment", head)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert torch.equal(model.score.weight, head["score.weight"])
    assert model.config.id2label == {0: "negative", 1: "positive"}
