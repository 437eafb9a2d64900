"""Every command on every family, as a user runs them: PEFT adapters saved on tiny models of each family,
tasks from CSV / JSONL files (a label task, a regression task and, for language models, a generative
task), then `eval`, `learn` (every objective that applies x every granularity), `merge` (every method),
`compare`, `export` (exact, compressed, full weights) and `analyze` (every lens).

Each cell either exits 0 with valid JSON (no bare NaN) and the artifact it promises, or refuses with
exit 2 and one line. Numbers are checked against references in the module tests (tests/conformance for
PEFT, test_verbalizer for the readers, test_export_families for full weights, test_lenses_families for
the lenses); here every combination must run end to end through the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import randomize_lora, texts, tiny_bert_base, tiny_tokenizer

from mergecore.analysis.catalog import LENSES
from mergecore.learn.objectives import OBJECTIVES
from mergecore.learn.params import GRANULARITIES
from mergecore.merges import METHODS

TINY = Path("/work/shared/data/tiny-random")
pytestmark = pytest.mark.skipif(not TINY.is_dir(), reason="tiny-random checkpoints not found in /work/shared/data")

FAMILIES = {  # name: (PEFT task type, LoRA targets: attention, output projections, MLP / feed-forward)
    "bert": ("SEQ_CLS", ["query", "value", "dense"]),
    "roberta": ("SEQ_CLS", ["query", "value", "dense"]),
    "t5": ("SEQ_2_SEQ_LM", ["q", "v", "o", "wi", "wo"]),
    "llama": ("CAUSAL_LM", ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
    "gpt2": ("CAUSAL_LM", ["c_attn", "c_proj", "c_fc"]),
    "qwen2": ("CAUSAL_LM", ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
}
BINS = ["0", "0.5", "1"]  # regression task: scores read as the expected value over these bins


def save_base(name: str, folder: Path) -> Path:
    """A tiny base model of the family with a tokenizer, in ``folder``."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    if name == "bert":
        return tiny_bert_base(folder)
    if name in ("t5", "llama"):
        shutil.copytree(TINY / name, folder)
        return folder
    torch.manual_seed(0)
    if name == "roberta":
        tok = tiny_tokenizer(folder)
        RobertaForSequenceClassification(RobertaConfig(
            vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=80, pad_token_id=0, type_vocab_size=2)).save_pretrained(folder)
        return folder
    small = dict(vocab_size=32000, num_hidden_layers=2, num_attention_heads=2, hidden_size=16)
    model = (GPT2LMHeadModel(GPT2Config(vocab_size=32000, n_positions=256, n_embd=16, n_layer=2, n_head=2))
             if name == "gpt2" else Qwen2ForCausalLM(Qwen2Config(intermediate_size=32, num_key_value_heads=2, **small)))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TINY / "llama").save_pretrained(folder)
    return folder


def make_adapters(name: str, base: Path, root: Path, labels: list[int]) -> list[Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    task_type, targets = FAMILIES[name]
    dirs = []
    for k, n in enumerate(labels):
        torch.manual_seed(10 + k)
        if task_type == "SEQ_CLS":
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=n, ignore_mismatched_sizes=True)
        else:
            model = (AutoModelForSeq2SeqLM if task_type == "SEQ_2_SEQ_LM" else AutoModelForCausalLM).from_pretrained(base)
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=targets, task_type=task_type,
                         fan_in_fan_out=name == "gpt2")
        pm = get_peft_model(model, cfg)
        randomize_lora(pm, 0.2)
        pm.save_pretrained(root / f"{name}_{k}")
        dirs.append(root / f"{name}_{k}")
    return dirs


def task_files(root: Path, generative: bool) -> Path:
    """tasks.json with relative paths: sentiment (label), score (regression), summary (generative)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = texts(12, seed=3)
    (root / "sent.csv").write_text("review,label\n" + "".join(
        f"{t},{'positive' if i % 2 else 'negative'}\n" for i, t in enumerate(rows)))
    (root / "score.csv").write_text("sentence,score\n" + "".join(f"{t},{(i % 5) / 4}\n" for i, t in enumerate(rows)))
    specs = [{"train": "sent.csv", "eval": "sent.csv", "text": "review", "label": "label",
              "labels": ["negative", "positive"]},
             {"train": "score.csv", "eval": "score.csv", "text": ["sentence"], "label": "score", "labels": BINS,
              "metric": "pearson_spearman"}]
    if generative:
        (root / "gen.jsonl").write_text("".join(json.dumps({"doc": t, "summary": " ".join(t.split()[:2])}) + "\n"
                                                for t in rows[:6]))
        specs.append({"train": "gen.jsonl", "eval": "gen.jsonl", "text": ["doc"], "reference": "summary"})
    (root / "tasks.json").write_text(json.dumps(specs))
    return root / "tasks.json"


class Family:
    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root
        self.classifier = FAMILIES[name][0] == "SEQ_CLS"
        base = save_base(name, root / "base")
        labels = [2, len(BINS)] + ([] if self.classifier else [0])
        self.dirs = make_adapters(name, base, root / "adapters", labels)
        self.tasks = task_files(root / "tasks", generative=not self.classifier)
        self.ws = root / "ws"
        self.src = ["--adapters", *map(str, self.dirs), "--task-files", str(self.tasks), "--workspace", str(self.ws),
                    "--device", "cpu", "--base-path", str(base)]

    @property
    def generative(self) -> bool:
        return not self.classifier


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    from mergecore.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def last_json(out: str) -> dict:
    """The last stdout line as strict JSON (a bare NaN would not parse)."""
    return json.loads(out.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


def ok(code: int, out: str, err: str) -> dict:
    assert code == 0, err[-2000:]
    return last_json(out)


def refused(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.strip().count("\n") == 0 and err.startswith("error:"), err[-2000:]
    assert all(w in err for w in words), err


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, tmp_path_factory, one_thread):
    return Family(request.param, tmp_path_factory.mktemp(request.param))


def applies(fam: Family, objective: str) -> bool:
    """Generative tasks learn with token-level js / kl only; the rest refuse in one line."""
    return not fam.generative or objective in ("js", "kl")


def test_eval(fam, capsys):
    data = ok(*cli(["eval", *fam.src, "--json"], capsys))
    assert set(data["experts"]) == {d.name for d in fam.dirs}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_learn(fam, objective, granularity, capsys):
    args = ["learn", *fam.src, "--objective", objective, "--granularity", granularity, "--steps", "2",
            "--samples", "4", "--batch-size", "2", "--labeled", "4", "--eval-every", "0", "--iterations", "1", "--json"]
    code, out, err = cli(args, capsys)
    if not applies(fam, objective):
        return refused(code, err, "generative")
    data = ok(code, out, err)
    assert data["status"] == "done" and set(data["run"]) == {d.name for d in fam.dirs}


@pytest.mark.parametrize("method", list(METHODS))
def test_merge(fam, method, capsys):
    data = ok(*cli(["merge", *fam.src, "--method", method, "--json"], capsys))
    assert data["method"] == method and data["run_id"]


def _run_folder(fam: Family, capsys, method: str = "ties") -> Path:
    out = fam.root / f"run-{method}"
    if not out.exists():
        ok(*cli(["merge", *fam.src, "--method", method, "--out", str(out), "--json"], capsys))
    return out


def test_compare(fam, capsys):
    ids = [ok(*cli(["merge", *fam.src, "--method", m, "--json"], capsys))["run_id"] for m in ("uniform", "ties")]
    data = ok(*cli(["compare", *ids, "--workspace", str(fam.ws), "--json"], capsys))
    assert len(data["average"]) >= 2


@pytest.mark.parametrize("mode", ["exact", "compressed", "full"])
def test_export(fam, mode, capsys, tmp_path):
    run = _run_folder(fam, capsys, "task_arithmetic")
    extra = {"exact": [], "compressed": ["--rank", "2"], "full": ["--full-weights"]}[mode]
    data = ok(*cli(["export", "--run", str(run), "--workspace", str(fam.ws), "--out", str(tmp_path / "x"),
                    *extra, "--json"], capsys))
    assert all((Path(data["path"]) / f).is_file() for f in data["files"])
    names = set(data["files"])
    assert ("config.json" in names) if mode == "full" else ("adapter_config.json" in names)


@pytest.mark.parametrize("what", LENSES)
def test_analyze(fam, what, capsys, tmp_path):
    run = _run_folder(fam, capsys, "task_arithmetic")
    data = ok(*cli(["analyze", "--run", str(run), "--workspace", str(fam.ws), "--what", what, "--samples", "4",
                    "--out", str(tmp_path / "a"), "--json"], capsys))
    assert data["what"] == what and (tmp_path / "a" / f"{what}.json").is_file()
    json.loads((tmp_path / "a" / f"{what}.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
