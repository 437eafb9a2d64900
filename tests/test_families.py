"""Family detection, base loading (folders, path override, offline hub ids, custom-code refusal)."""

from __future__ import annotations

import json

import pytest
import torch
from test_verbalizer import TINY, make_adapters, tasks

from mergecore.adapters import load_adapters
from mergecore.bases import detect_family, family_of_adapters, load_base
from mergecore.errors import MergecoreError
from mergecore.forward.workbench import open_workbench

pytestmark = [pytest.mark.skipif(not TINY.is_dir(), reason="tiny-random checkpoints not found in /work/shared/data"),
              pytest.mark.usefixtures("one_thread")]


def test_detect_family_from_configs():
    from transformers import AutoConfig, BertConfig, GPT2Config, Qwen2Config

    assert detect_family(AutoConfig.from_pretrained(TINY / "t5")) == "seq2seq"
    assert detect_family(AutoConfig.from_pretrained(TINY / "llama")) == "causal"
    assert detect_family(AutoConfig.from_pretrained(TINY / "bloom")) == "causal"
    assert detect_family(GPT2Config()) == "causal" and detect_family(Qwen2Config()) == "causal"
    assert detect_family(BertConfig()) == "classifier"
    assert detect_family({"architectures": ["RobertaForSequenceClassification"]}) == "classifier"


@pytest.mark.parametrize("name, family, cls", [("t5", "seq2seq", "T5ForConditionalGeneration"),
                                               ("llama", "causal", "LlamaForCausalLM"),
                                               ("bloom", "causal", "BloomForCausalLM")])
def test_load_base_from_folder(name, family, cls):
    model, tok, fam = load_base(str(TINY / name))
    assert fam == family and type(model).__name__ == cls and tok.eos_token_id is not None


def test_offline_hub_id_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MergecoreError, match=r"'nobody/no-such-model'.*--base-model") as info:
        load_base("nobody/no-such-model")
    assert "\n" not in str(info.value)


def test_base_path_override_keeps_the_hub_name():
    model, _, fam = load_base("google/flan-t5-base", base_path=str(TINY / "t5"))
    assert fam == "seq2seq" and model.config.d_model == 32
    with pytest.raises(MergecoreError, match="does not exist"):
        load_base("google/flan-t5-base", base_path="/nonexistent/folder")


def test_custom_code_is_refused_without_opt_in(tmp_path):
    cfg = json.loads((TINY / "llama" / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MergecoreError, match="--trust-remote-code"):
        load_base(str(tmp_path))
    with pytest.raises(MergecoreError, match="unknown model family"):
        load_base(str(TINY / "t5"), family="encoder")


def test_open_bench_with_hub_named_adapters_and_local_base(tmp_path):
    dirs = make_adapters("t5", tmp_path)
    adapters = load_adapters(dirs, base_model="google/flan-t5-base")  # as FusionBench's configs name it
    assert family_of_adapters(adapters) == "seq2seq"
    with pytest.raises(MergecoreError, match="google/flan-t5-base"):
        open_workbench(adapters, tasks(), device="cpu")
    bench = open_workbench(adapters, tasks(), device="cpu", base_path=str(TINY / "t5"))
    assert bench.reader.family == "seq2seq" and bench.model.num_labels == []
    assert bench.reader.start_id == bench.model.model.config.decoder_start_token_id
    probs = bench.predict(bench.routing())
    assert [p.shape for p in probs] == [(4, 2), (3, 3)]
    assert all(torch.allclose(p.sum(-1), torch.ones(len(p))) for p in probs)


GLUE_DIR = TINY.parent / "glue"


@pytest.mark.skipif(not GLUE_DIR.is_dir(), reason="shared GLUE folder not present")
def test_glue_tasks_learn_and_evaluate_on_seq2seq(tmp_path):
    from mergecore.data.glue import GlueParams, load_glue
    from mergecore.forward.evaluate import task_scores
    from mergecore.learn.learner import Learner
    from mergecore.learn.params import LearnParams

    ts = load_glue(["rte", "stsb"], source=GLUE_DIR, params=GlueParams(calibration=4, evaluation=6, stsb_step=0.5))
    bench = open_workbench(load_adapters(make_adapters("t5", tmp_path)), ts, device="cpu", base_path=str(TINY / "t5"))
    res = Learner(bench, LearnParams(steps=2, samples=4, batch_size=2, eval_every=2, eval_limit=3)).run()
    assert res.status == "done" and torch.isfinite(res.coefs).all()
    probs = bench.predict(bench.uniform())
    assert [p.shape for p in probs] == [(6, 2), (6, 11)]
    scores = task_scores(ts, probs)
    assert set(scores) == {"rte", "stsb"} and all(-100 <= v <= 100 for v in scores.values())
