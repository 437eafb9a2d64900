"""Task mappings (--task-files) with CSV and JSONL data: text labels, relative paths, prompts, spec checks,
and the base-model refusals a user meets next (missing folder, wrong --family). Every refusal is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergecore.cli import main
from mergecore.data.sources import TaskSource, load_tasks, tasks_from_specs
from mergecore.errors import MergecoreError

LABELS = ["negative", "positive"]
# (text, label as written, class id it must parse to): names map through LABELS, numbers stay ids
ROWS = [("good movie", "positive", 1), ("bad film", "negative", 0), ("fine plot", "1", 1), ("dull", "0", 0)]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_rows(path: Path, rows, names=("review", "stars")) -> Path:
    """rows as CSV (header first) or JSONL (one object per line), by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(names, r))) + "\n" for r in rows), encoding="utf-8")
    else:
        lines = [",".join(names)] + [",".join(f'"{v}"' for v in r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def label_spec(folder: Path, ext: str, rows=ROWS, **extra) -> dict:
    train = write_rows(folder / f"train.{ext}", [r[:2] for r in rows])
    ev = write_rows(folder / f"eval.{ext}", [r[:2] for r in rows])
    return {"train": str(train), "eval": str(ev), "text": ["review"], "label": "stars", "labels": LABELS, **extra}


def refused(names, specs, **kw) -> str:
    with pytest.raises(MergecoreError) as info:
        tasks_from_specs(names, specs, **kw)
    msg = str(info.value)
    assert "\n" not in msg and ";" in msg, msg
    return msg


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def assert_one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ----------------------------------------------------------------------------- 1. text labels


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_text_labels_map_through_labels_and_ids_keep_working(tmp_path, ext):
    task = tasks_from_specs(["sent"], [label_spec(tmp_path, ext)])[0]
    assert task.evaluation.labels == (1, 0, 1, 0)  # ROWS' third column, written out
    assert task.evaluation.inputs == (("good movie",), ("bad film",), ("fine plot",), ("dull",))
    # the train file is labeled: its labels are kept for the supervised ce objective
    assert task.calibration.labels == task.evaluation.labels and task.label_names == tuple(LABELS)


@pytest.mark.parametrize("ext, row", [("csv", "row 4"), ("jsonl", "row 3")])  # CSV counts the header as row 1
def test_text_label_not_in_labels_names_file_row_value_and_labels(tmp_path, ext, row):
    rows = ROWS[:2] + [("so so", "neutral", None)]
    msg = refused(["sent"], [label_spec(tmp_path, ext, rows)])
    for w in (f"eval.{ext}", row, "'neutral'", "negative, positive"):
        assert w in msg, (w, msg)
    assert "give a label mapping" not in msg


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_regression_keeps_float_labels_and_scores_bins_by_label_values(tmp_path, ext):
    rows = [("a dog", "4.85", None), ("a cat", "1.3", None), ("hi", "0", None)]
    spec = {**label_spec(tmp_path, ext, rows), "labels": ["0", "2.5", "5"], "metric": "pearson_spearman"}
    task = tasks_from_specs(["sts"], [spec])[0]
    assert task.evaluation.labels == (4.85, 1.3, 0.0) and task.label_values == (0.0, 2.5, 5.0)
    from mergecore.forward.evaluate import predictions

    probs = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert predictions(task, probs).tolist() == [5.0, 1.25, 0.0]  # expected value of the bin values
    msg = refused(["sts"], [{**spec, "labels": ["low", "high"]}])
    assert "'sts'" in msg and "labels" in msg and "pearson_spearman" in msg


# ----------------------------------------------------------------------------- 2. relative paths


def relative_mapping(tmp_path: Path, ext: str) -> Path:
    folder = tmp_path / "project"
    spec = label_spec(folder / "data", ext)
    spec.update(train=f"data/train.{ext}", eval=f"data/eval.{ext}")
    (folder / "tasks.json").write_text(json.dumps([spec]), encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    return folder / "tasks.json"


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_relative_paths_are_read_from_the_mapping_folder(tmp_path, monkeypatch, ext):
    mapping = relative_mapping(tmp_path, ext)
    specs = json.loads(mapping.read_text())
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_tasks(["sent"], TaskSource("files", mapping="../project/tasks.json"))[0].evaluation.labels == (1, 0, 1, 0)
    assert tasks_from_specs(["sent"], specs, base_dir=mapping.parent)[0].evaluation.labels == (1, 0, 1, 0)
    assert "does not exist" in refused(["sent"], specs)  # no base_dir: the current folder, as before
    monkeypatch.chdir(mapping.parent)
    assert tasks_from_specs(["sent"], specs)[0].evaluation.labels == (1, 0, 1, 0)


def test_cli_reads_relative_paths_from_the_mapping_folder(tiny_setup, tmp_path, monkeypatch, capsys):
    mapping = relative_mapping(tmp_path, "csv")
    monkeypatch.chdir(tmp_path / "elsewhere")
    alpha = tiny_setup[1][0]  # a 2-label adapter
    code, out, err = run_cli(["eval", "--adapters", str(alpha), "--task-files", "../project/tasks.json",
                              "--device", "cpu", "--workspace", str(tmp_path / "ws"), "--json"], capsys)
    assert code == 0, err
    scores = json.loads(out.strip().splitlines()[-1])["experts"]
    assert list(scores) == ["alpha"] and 0.0 <= scores["alpha"] <= 100.0


# ----------------------------------------------------------------------------- 3. prompt placeholders


@pytest.mark.parametrize("prompt, placeholder", [("{0} {1}", "{1}"), ("Review: {review}", "{review}"),
                                                 ("{} and {}", "{}")])
@pytest.mark.parametrize("generative", [False, True])
def test_prompt_placeholder_without_a_column_is_refused_at_load(tmp_path, prompt, placeholder, generative):
    spec = label_spec(tmp_path, "csv", prompt=prompt)
    if generative:
        spec = {k: spec[k] for k in ("train", "eval", "text", "prompt")} | {"reference": "stars"}
    msg = refused(["sent"], [spec])
    for w in ("'sent'", placeholder, "{0}=review"):
        assert w in msg, (w, msg)


def test_prompt_that_fits_the_columns_renders(tmp_path):
    spec = label_spec(tmp_path, "jsonl", prompt="Review: {0}\nSentiment:")
    task = tasks_from_specs(["sent"], [spec])[0]
    assert task.render(task.evaluation.inputs[0]) == "Review: good movie\nSentiment:"
    assert "not a valid template" in refused(["sent"], [{**spec, "prompt": "Review: {0"}])


# ----------------------------------------------------------------------------- 4. text as one column name


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_text_string_is_one_column(tmp_path, ext):
    spec = {**label_spec(tmp_path, ext), "text": "review"}
    task = tasks_from_specs(["sent"], [spec])[0]
    assert task.evaluation.inputs == (("good movie",), ("bad film",), ("fine plot",), ("dull",))
    assert task.field_names == ("review",)


@pytest.mark.parametrize("text", [5, ["review", 3], [], "", {"col": "review"}])
def test_text_of_the_wrong_type_is_one_line(tmp_path, text):
    msg = refused(["sent"], [{**label_spec(tmp_path, "csv"), "text": text}])
    assert "'text'" in msg and "column name" in msg and "adapter 'sent'" in msg


# ----------------------------------------------------------------------------- 5. unknown keys, wrong values


@pytest.mark.parametrize("change, words", [
    ({"lables": LABELS}, ["unknown key 'lables'", "labels, metric, prompt"]),
    ({"labels": "negative,positive"}, ["'labels'", "list of class names"]),
    ({"labels": [True, False]}, ["'labels'", "list of class names"]),
    ({"metric": "f1"}, ["'metric'", "accuracy, matthews, pearson_spearman"]),
    ({"metric": "rouge1"}, ["'metric'", "accuracy, matthews, pearson_spearman"]),
    ({"label": ["stars"]}, ["'label'", "label column name"]),
    ({"verbalizers": ["bad"]}, ["'verbalizers'", "2 strings"]),
    ({"prompt": 3}, ["'prompt'", "template"]),
    ({"train": 7}, ["'train'", "file path"]),
])
def test_spec_key_or_value_errors_name_the_key_and_the_choices(tmp_path, change, words):
    msg = refused(["sent"], [{**label_spec(tmp_path, "csv"), **change}])
    for w in words:
        assert w in msg, (w, msg)


def test_spec_shape_errors(tmp_path):
    spec = label_spec(tmp_path, "csv")
    assert "one object per adapter" in refused(["a", "b"], [spec])
    assert "one object per adapter" in refused(["a"], {"a": spec})
    assert "lacks key(s) labels" in refused(["a"], [{k: v for k, v in spec.items() if k != "labels"}])
    gen = {"train": spec["train"], "eval": spec["eval"], "text": "review", "reference": None, "labels": LABELS}
    assert "unknown key 'labels' for a generative task" in refused(["a"], [gen])
    assert "is a str, not an object" in refused(["a"], ["train.csv"])


@pytest.mark.parametrize("change, rows, words", [
    ({"lables": LABELS}, ROWS, ["tasks.json", "unknown key 'lables'"]),
    ({"metric": "f1"}, ROWS, ["tasks.json", "'metric'", "pearson_spearman"]),
    ({"text": 5}, ROWS, ["tasks.json", "'text'"]),
    ({"prompt": "{0} {1}"}, ROWS, ["'alpha'", "{1}", "{0}=review"]),
    ({}, [ROWS[0], ("meh", "neutral")], ["eval.csv", "row 3", "'neutral'", "negative, positive"]),
])
def test_cli_task_file_errors_exit_2_with_one_line(tiny_setup, tmp_path, capsys, change, rows, words):
    mapping = tmp_path / "tasks.json"
    mapping.write_text(json.dumps([{**label_spec(tmp_path, "csv", rows), **change}]), encoding="utf-8")
    code, _, err = run_cli(["eval", "--adapters", str(tiny_setup[1][0]), "--task-files", str(mapping),
                            "--device", "cpu", "--workspace", str(tmp_path / "ws")], capsys)
    assert code == 2
    assert_one_line_error(err, *words)


# ----------------------------------------------------------------------------- 6. base model folder and family


@pytest.mark.parametrize("name", ["./no-such-base", "../no/such-base", "/nonexistent/base", "~/no-such-base-xyz",
                                  "models/bert/base"])
def test_missing_base_folder_is_named_as_a_folder(name):
    from mergecore.bases import load_base

    with pytest.raises(MergecoreError) as info:
        load_base(name)
    assert str(info.value) == (f"base model folder {name} does not exist; pass the folder holding config.json "
                               "with --base-model PATH")


def test_hub_id_still_reports_offline(monkeypatch):
    from mergecore.bases import load_base

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MergecoreError, match="offline and not in the local cache"):
        load_base("nobody/no-such-model")


def save_config(cfg, folder: Path) -> str:
    cfg.save_pretrained(folder)
    return str(folder)


def tiny_configs(tmp_path: Path) -> dict[str, str]:
    from transformers import BertConfig, LlamaConfig, T5Config

    small = dict(num_attention_heads=2, vocab_size=64)
    return {
        "bert": save_config(BertConfig(hidden_size=8, num_hidden_layers=1, intermediate_size=16,
                                       architectures=["BertForSequenceClassification"], **small), tmp_path / "bert"),
        "t5": save_config(T5Config(d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2, vocab_size=64,
                                   architectures=["T5ForConditionalGeneration"]), tmp_path / "t5"),
        "llama": save_config(LlamaConfig(hidden_size=8, num_hidden_layers=1, intermediate_size=16,
                                         architectures=["LlamaForCausalLM"], **small), tmp_path / "llama"),
    }


@pytest.mark.parametrize("base, family, actual, cls", [
    ("bert", "seq2seq", "classifier", "BertConfig"), ("bert", "causal", "classifier", "BertConfig"),
    ("t5", "causal", "seq2seq", "T5Config"), ("t5", "classifier", "seq2seq", "T5Config"),
    ("llama", "seq2seq", "causal", "LlamaConfig"),
])
def test_wrong_family_is_refused_in_one_line(tmp_path, base, family, actual, cls):
    from mergecore.bases import load_base

    path = tiny_configs(tmp_path)[base]
    with pytest.raises(MergecoreError) as info:
        load_base(path, family)
    assert str(info.value).startswith(f"base model {path!r} is a {actual} model ({cls}), not {family}; "
                                      f"drop --family or pick {actual}")


def test_plausible_families_are_not_refused():
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    from mergecore.bases import _mismatch

    assert _mismatch(LlamaConfig(architectures=["LlamaForCausalLM"]), "classifier") is None  # a decoder classifier
    assert _mismatch(BertConfig(), "classifier") is None and _mismatch(T5Config(), "seq2seq") is None
    assert _mismatch(GPT2Config(), "causal") is None
    assert _mismatch({"model_type": "somenewlm"}, "causal") is None  # unknown type: let transformers decide
    assert _mismatch({"model_type": "t5", "is_encoder_decoder": True,
                      "architectures": ["T5ForSequenceClassification"]}, "classifier") is None


def test_cli_wrong_family_and_missing_base_exit_2(tiny_setup, tmp_path, capsys):
    mapping = tmp_path / "tasks.json"
    mapping.write_text(json.dumps([label_spec(tmp_path, "csv")]), encoding="utf-8")
    args = ["eval", "--adapters", str(tiny_setup[1][0]), "--task-files", str(mapping), "--device", "cpu",
            "--workspace", str(tmp_path / "ws")]
    code, _, err = run_cli([*args, "--family", "seq2seq"], capsys)
    assert code == 2
    assert_one_line_error(err, "is a classifier model (BertConfig), not seq2seq", "pick classifier")
    code, _, err = run_cli([*args, "--base-model", "./no-such-base"], capsys)
    assert code == 2
    assert_one_line_error(err, "base model folder ./no-such-base does not exist", "--base-model PATH")


def test_app_runs_record_their_task_source(tmp_path):
    """The app's bench records where its tasks came from, as the CLI does: a typed mapping is saved once
    (by content) in the workspace so `export/analyze --run` can reuse it."""
    import json as _json

    from mergecore.data.sources import TaskSource, record, save_mapping, typed_mapping

    specs = [{"train": "/data/a.csv", "eval": "/data/b.csv", "text": ["t"], "label": "y", "labels": ["n", "p"]}]
    src = record(typed_mapping(_json.dumps(specs), tmp_path / "task-mappings"), ["sst2"])
    assert src["kind"] == "files" and _json.loads(Path(src["path"]).read_text()) == specs
    assert save_mapping(specs, tmp_path / "task-mappings") == Path(src["path"])  # same content, same file
    assert record(TaskSource(), ["sst2"]) == {"kind": "demo"}
    glue = record(TaskSource("glue", glue_dir=str(tmp_path), calibration=32, eval_size=50), ["sst2"])
    assert glue == {"kind": "glue", "names": ["sst2"], "dir": str(tmp_path.resolve()), "source": None,
                    "calibration": 32, "eval_size": 50}


# ----------------------------------------------------------------------------- bounds that real files never meet
# (the probes that hit them are in tests/reliability/test_bounded.py)


def test_brackets_inside_json_strings_are_not_nesting(tmp_path):
    from mergecore.data.taskfiles import Columns, load_split

    text = "[" * 200 + "{x"
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"sentence": text, "label": 1}) + "\n", encoding="utf-8")
    assert load_split(path, Columns()).inputs == ((text,),)


def test_missing_columns_list_a_real_header(tmp_path):
    from mergecore.data.taskfiles import Columns, load_split

    path = write_rows(tmp_path / "t.csv", [("good", "1")])
    with pytest.raises(MergecoreError, match=r"missing column\(s\) sentence, label \(columns: review, stars\)"):
        load_split(path, Columns())
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(12)) + "\n" + ",".join("x" * 12) + "\n", encoding="utf-8")
    with pytest.raises(MergecoreError, match=r"\(columns: c0, c1, .*, c9, and 2 more\)"):
        load_split(wide, Columns())


def test_bare_positional_prompts_pass():
    from mergecore.data.taskfiles import check_prompt

    check_prompt("pair", "A: {0}\nB: {1}\n{{literal}}", ("a", "b"))
    check_prompt("auto", "A: {} B: {}", ("a", "b"))
    with pytest.raises(MergecoreError, match="cannot be filled"):
        check_prompt("mixed", "{} {0}", ("a",))


def test_mapping_files_resolve_relative_paths_as_load_tasks_reads_them(tmp_path, monkeypatch):
    """One rule for the files a mapping names (protected from --out, checked by --run): relative to the
    mapping's folder, as load_tasks reads them, even when the current folder holds a file of the same name."""
    from mergecore.data.sources import mapping_files

    (tmp_path / "maps" / "data").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    for folder in (tmp_path / "maps" / "data", tmp_path / "data"):
        (folder / "t.csv").write_text("text,label\ngood,1\nbad,0\n")
    mapping = tmp_path / "maps" / "m.json"
    mapping.write_text(json.dumps([{"train": "data/t.csv", "eval": str(tmp_path / "data" / "t.csv"), "text": "text",
                                    "label": "label", "labels": ["neg", "pos"]}]))
    monkeypatch.chdir(tmp_path)
    assert mapping_files(mapping) == [tmp_path / "maps" / "data" / "t.csv", tmp_path / "data" / "t.csv"]
    mapping.write_text("{not json")
    assert mapping_files(mapping) == []
    assert mapping_files(tmp_path / "maps") == []  # a folder: load_tasks says so, here it names nothing
