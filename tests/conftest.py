"""Shared fixtures: tiny models built from configs, tokenizers built in-test, PEFT adapters."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = ("good bad great awful movie film plot actor the a is was not very really fine dull fun "
         "sport game team market stock price science study cat dog runs run sleeps").split()


def tiny_tokenizer(folder: Path):
    """A WordPiece BERT tokenizer over a tiny vocabulary, written to ``folder``."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def tiny_bert_base(folder: Path, seed: int = 0):
    """A 2-layer BERT sequence classifier + tokenizer saved to ``folder``."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = tiny_tokenizer(folder)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(folder)
    return folder


def make_adapter(base_dir: Path, out: Path, num_labels: int, r: int, targets: list[str], seed: int,
                 alpha: int | None = None, rslora: bool = False):
    """A PEFT LoRA adapter with random nonzero factors and its own classifier head."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels,
                                                          ignore_mismatched_sizes=True)
    cfg = LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=targets, task_type="SEQ_CLS",
                     use_rslora=rslora)
    pm = get_peft_model(model, cfg)
    randomize_lora(pm, 0.3)
    pm.save_pretrained(out)
    return out


def randomize_lora(pm, std: float) -> None:
    """Nonzero random LoRA factors (PEFT initialises B to zero), from the global seed."""
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * std)


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """Base folder + three adapters with different ranks, targets, label counts and scalings."""
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_bert_base(root / "base")
    specs = [("alpha", 2, 4, ["query", "value"], {}), ("beta", 3, 2, ["query", "value", "dense"], {"alpha": 3}),
             ("gamma", 2, 3, ["value"], {"rslora": True})]
    dirs = [make_adapter(base, root / name, nl, r, t, seed=i + 1, **kw) for i, (name, nl, r, t, kw) in enumerate(specs)]
    return base, dirs


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread avoids oversubscription on the shared 2-core machine (3x faster here).
    Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def stop_workers(workspace) -> None:
    """Kill the worker processes still running runs of ``workspace`` (runs outlive their server by design, so a
    test that starts runs it does not finish cleans them up)."""
    import signal

    from mergecore.runs.store import RunStore

    if not (Path(workspace) / "runs.sqlite").exists():
        return
    store = RunStore(workspace)
    for run in store.list():
        pid = store.pid(run.id)
        if run.status == "running" and pid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def label_task_files(folder: Path, label_counts=(2, 3), rows: int = 6) -> Path:
    """A tasks.json over one CSV per task (``text,label``; the CSV is both train and eval split)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for k, n in enumerate(label_counts):
        f = folder / f"t{k}.csv"
        f.write_text("text,label\n" + "".join(f"{t},{i % n}\n" for i, t in enumerate(texts(rows, seed=k))))
        specs.append({"train": str(f), "eval": str(f), "text": ["text"], "label": "label",
                      "labels": [f"l{i}" for i in range(n)]})
    (folder / "tasks.json").write_text(json.dumps(specs))
    return folder / "tasks.json"


@contextlib.contextmanager
def app_workspace(ws):
    """The app's workspace for an AppTest fixture: $MERGECORE_WORKSPACE set to ``ws`` and Streamlit's resource
    cache cleared (so the run store is opened there), the variable restored afterwards."""
    import streamlit as st

    old = os.environ.get("MERGECORE_WORKSPACE")
    os.environ["MERGECORE_WORKSPACE"] = str(ws)
    st.cache_resource.clear()
    try:
        yield ws
    finally:
        if old is None:
            os.environ.pop("MERGECORE_WORKSPACE", None)
        else:
            os.environ["MERGECORE_WORKSPACE"] = old
