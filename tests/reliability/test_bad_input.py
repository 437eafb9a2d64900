"""Bad input: every case is refused with exit code 2 and one line naming the problem and the fix,
the run store is left unchanged, and nothing in a malicious file runs.

Adapter cases go through the real CLI entry point (``mergecore.cli.main``, the function) in-process, which is
what ``python -m mergecore`` calls; a few representative cases also run as a subprocess. Task-file
cases are library-level (the CLI has no --task-file flag yet).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergecore.adapters import load_adapters
from mergecore.cli import main
from mergecore.errors import MergecoreError
from mergecore.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[2]
CONFIG, WEIGHTS, BIN = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"


# ----------------------------------------------------------------------------- helpers


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CONFIG).read_text())
    cfg.update(changes)
    (folder / CONFIG).write_text(json.dumps(cfg))


def edit_tensors(folder: Path, fn) -> None:
    tensors = load_file(folder / WEIGHTS)
    save_file(fn(tensors), folder / WEIGHTS)


def first(tensors: dict, part: str) -> str:
    return sorted(k for k in tensors if part in k)[0]


class Planted:
    """A pickle whose unpickling would create ``path`` (builtins.open(path, "w"))."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def custom_code_base(base: Path, out: Path, marker: Path) -> Path:
    """A copy of ``base`` whose config.json maps to custom code that would create ``marker``."""
    shutil.copytree(base, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                       "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (out / "config.json").write_text(json.dumps(cfg))
    code = (f"open({str(marker)!r}, 'w').write('ran')\n"
            "from transformers import BertConfig as EvilConfig, BertForSequenceClassification as EvilModel\n")
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (out / name).write_text(code)
    return out


# ----------------------------------------------------------------------------- cases

# builder(alpha copy, beta copy, base, tmp) -> (adapter paths, extra CLI args)


def _missing_config(a, b, base, tmp):
    (a / CONFIG).unlink()
    return [a], []


def _malformed_config(a, b, base, tmp):
    (a / CONFIG).write_text('{"peft_type": "LORA", ')
    return [a], []


def _config_not_object(a, b, base, tmp):
    (a / CONFIG).write_text("[1, 2]")
    return [a], []


def _config_not_utf8(a, b, base, tmp):
    (a / CONFIG).write_bytes(b'\xff\xfe{"peft_type": "LORA"}')
    return [a], []


def _not_lora(a, b, base, tmp):
    edit_config(a, peft_type="IA3")
    return [a], []


def _alpha_string(a, b, base, tmp):
    edit_config(a, lora_alpha="big")
    return [a], []


def _alpha_nan(a, b, base, tmp):
    edit_config(a, lora_alpha=float("nan"))  # json writes the NaN literal, which json.loads accepts
    return [a], []


def _bad_alpha_pattern(a, b, base, tmp):
    edit_config(a, alpha_pattern={"query(": 4})
    return [a], []


def _truncated(a, b, base, tmp):
    data = (a / WEIGHTS).read_bytes()
    (a / WEIGHTS).write_bytes(data[: len(data) // 2])
    return [a], []


def _corrupt_header(a, b, base, tmp):
    data = bytearray((a / WEIGHTS).read_bytes())
    data[8:40] = b"\x00" * 32  # the JSON header right after the 8-byte length
    (a / WEIGHTS).write_bytes(bytes(data))
    return [a], []


def _garbage(a, b, base, tmp):
    (a / WEIGHTS).write_bytes(os.urandom(4096))
    return [a], []


def _empty_weights(a, b, base, tmp):
    (a / WEIGHTS).write_bytes(b"")
    return [a], []


def _missing_weights(a, b, base, tmp):
    (a / WEIGHTS).unlink()
    return [a], []


def _bin_refused(a, b, base, tmp):
    tensors = load_file(a / WEIGHTS)
    (a / WEIGHTS).unlink()
    torch.save(tensors, a / BIN)
    return [a], []


def _bin_not_state_dict(a, b, base, tmp):
    (a / WEIGHTS).unlink()
    torch.save([torch.zeros(2)], a / BIN)
    return [a], ["--allow-bin"]


def _different_bases(a, b, base, tmp):
    edit_config(b, base_model_name_or_path="someone/other-model")
    return [a, b], []


def _shape_mismatch(a, b, base, tmp):
    # beta's query lora_A reads 19 inputs where the base (and alpha) have 16
    edit_tensors(b, lambda t: {k: (torch.randn(v.shape[0], v.shape[1] + 3) if "lora_A" in k else v)
                               for k, v in t.items()})
    return [a, b], []


def _rank_inconsistent(a, b, base, tmp):
    def cut(t):
        k = first(t, "lora_A")
        return {**t, k: t[k][:1]}
    edit_tensors(a, cut)
    return [a], []


def _rank_zero(a, b, base, tmp):
    edit_tensors(a, lambda t: {k: (v[:0] if "lora_A" in k else v[:, :0] if "lora_B" in k else v)
                               for k, v in t.items()})
    return [a], []


def _nan_weights(a, b, base, tmp):
    def poison(t):
        k = first(t, "lora_B")
        t[k][0, 0] = float("nan")
        return t
    edit_tensors(a, poison)
    return [a], []


def _inf_weights(a, b, base, tmp):
    def poison(t):
        k = first(t, "lora_A")
        t[k][-1, -1] = float("-inf")
        return t
    edit_tensors(a, poison)
    return [a], []


def _nan_head(a, b, base, tmp):
    def poison(t):
        k = first(t, "classifier")
        t[k].fill_(float("nan"))
        return t
    edit_tensors(a, poison)
    return [a], []


def _no_lora(a, b, base, tmp):
    edit_tensors(a, lambda t: {k: v for k, v in t.items() if "lora_" not in k})
    return [a], []


def _half_pair(a, b, base, tmp):
    def drop(t):
        del t[first(t, "lora_B")]
        return t
    edit_tensors(a, drop)
    return [a], []


def _file_not_folder(a, b, base, tmp):
    return [a / CONFIG], []


def _no_folder(a, b, base, tmp):
    return [tmp / "no-such-adapter"], []


def _duplicate(a, b, base, tmp):
    return [a, a], []


def _no_base_named(a, b, base, tmp):
    edit_config(a, base_model_name_or_path=None)
    return [a], []


def _unknown_task(a, b, base, tmp):
    return [a], []  # valid adapter, but no task of that name


def _custom_code(a, b, base, tmp):
    custom_code_base(base, tmp / "custom-base", tmp / "EXECUTED")
    edit_config(a, base_model_name_or_path=str(tmp / "custom-base"))
    return [a], []


CASES = {  # name: (builder, words the message must hold)
    "config missing": (_missing_config, ["adapter_config.json is missing", "needs adapter_config.json"]),
    "config malformed JSON": (_malformed_config, ["not valid JSON", "re-save"]),
    "config not an object": (_config_not_object, ["JSON object", "re-save"]),
    "config not UTF-8": (_config_not_utf8, ["not valid JSON", "utf-8", "re-save"]),
    "config peft_type IA3": (_not_lora, ["peft_type is IA3", "only LORA"]),
    "config lora_alpha a string": (_alpha_string, ["lora_alpha is 'big'", "finite number"]),
    "config lora_alpha NaN": (_alpha_nan, ["lora_alpha is nan", "finite number"]),
    "config alpha_pattern bad regex": (_bad_alpha_pattern, ["alpha_pattern key", "valid regex"]),
    "safetensors truncated": (_truncated, ["corrupt or truncated", "re-export"]),
    "safetensors header corrupt": (_corrupt_header, ["corrupt or truncated", "re-export"]),
    "safetensors random bytes": (_garbage, ["corrupt or truncated", "re-export"]),
    "safetensors empty file": (_empty_weights, ["corrupt or truncated", "re-export"]),
    "weights missing": (_missing_weights, ["adapter_model.safetensors is missing"]),
    ".bin without --allow-bin": (_bin_refused, ["is a pickle", "--allow-bin"]),
    ".bin not a state dict": (_bin_not_state_dict, ["not a state dict", "re-export"]),
    "different base models": (_different_bases, ["different base models", "someone/other-model", "one base"]),
    "shape mismatch": (_shape_mismatch, ["shape mismatch", "(16, 19)", "same base model"]),
    "lora_A/lora_B ranks differ": (_rank_inconsistent, ["lora_A has rank 1 but lora_B 4", "re-export"]),
    "rank 0": (_rank_zero, ["rank 0", "r >= 1"]),
    "NaN weights": (_nan_weights, ["NaN or Inf", "retrain or re-export"]),
    "Inf weights": (_inf_weights, ["NaN or Inf", "retrain or re-export"]),
    "NaN head": (_nan_head, ["classifier.", "NaN or Inf", "retrain or re-export"]),
    "no LoRA tensors": (_no_lora, ["no lora_A/lora_B weights", "LoRA adapter"]),
    "lora_A without lora_B": (_half_pair, ["lora_A only", "re-export"]),
    "a file, not a folder": (_file_not_folder, ["is a file", "pass the adapter folder"]),
    "folder does not exist": (_no_folder, ["does not exist", "PEFT adapter folder"]),
    "same adapter twice": (_duplicate, ["duplicate adapter names", "distinct name"]),
    "no base model named": (_no_base_named, ["name no base model", "--base-model"]),
    "adapter of no known task": (_unknown_task, ["no tasks known", "name adapter folders after demo tasks"]),
    "base needs trust_remote_code": (_custom_code, ["needs custom code", "auto_map", "--trust-remote-code"]),
}
NEEDS_TASK_NAME = {"no base model named", "base needs trust_remote_code"}  # must get past task pairing


@pytest.fixture
def seeded_ws(tmp_path):
    """A workspace holding one finished run, and its snapshot."""
    ws = tmp_path / "ws"
    store = RunStore(ws)
    rid = store.create("seed", "learned", {"k": 1})
    store.add_event(rid, "step", 1, {"loss": 1.0})
    store.finish(rid, "done", {"average": 1.0})
    return ws, snapshot(ws)


def snapshot(ws: Path) -> list:
    store = RunStore(ws)
    return [(r.id, r.status, r.updated, r.result, len(store.events(r.id)), store.artifacts(r.id)) for r in store.list()]


def build(case: str, tiny_setup, tmp: Path):
    base, dirs = tiny_setup
    name = "sentiment" if case in NEEDS_TASK_NAME else "alpha"
    a, b = shutil.copytree(dirs[0], tmp / name), shutil.copytree(dirs[1], tmp / "beta")
    return CASES[case][0](a, b, base, tmp)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def assert_one_line(err: str, words: list[str]) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > len("error: "), err
    msg = lines[0]
    assert ";" in msg, f"message names no fix: {msg}"  # "<problem>; <fix>"
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)
    return msg


@pytest.mark.parametrize("case", list(CASES))
def test_cli_refuses_with_one_line_and_store_unchanged(case, tiny_setup, tmp_path, seeded_ws, capsys):
    ws, before = seeded_ws
    paths, extra = build(case, tiny_setup, tmp_path)
    code, err = run_cli(["eval", "--adapters", *map(str, paths), "--workspace", str(ws), *extra], capsys)
    assert code == 2
    assert_one_line(err, CASES[case][1])
    assert snapshot(ws) == before
    assert not (tmp_path / "EXECUTED").exists()


LOADER_CASES = [c for c in CASES if c not in NEEDS_TASK_NAME | {"adapter of no known task"}]


@pytest.mark.parametrize("case", LOADER_CASES)
def test_library_raises_mergecore_error(case, tiny_setup, tmp_path):
    paths, extra = build(case, tiny_setup, tmp_path)
    with pytest.raises(MergecoreError) as exc:
        load_adapters(paths, allow_bin="--allow-bin" in extra)
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- pickles


def test_malicious_pickle_is_not_executed_with_or_without_opt_in(tiny_setup, tmp_path, seeded_ws, capsys):
    ws, before = seeded_ws
    base, dirs = tiny_setup
    a = shutil.copytree(dirs[0], tmp_path / "alpha")
    marker = tmp_path / "PWNED"
    tensors = load_file(a / WEIGHTS)
    (a / WEIGHTS).unlink()
    torch.save({"payload": Planted(marker), **tensors}, a / BIN)
    assert not marker.exists()  # saving only records the call
    code, err = run_cli(["eval", "--adapters", str(a), "--workspace", str(ws)], capsys)
    assert code == 2 and not marker.exists()
    assert_one_line(err, ["is a pickle", "--allow-bin"])
    code, err = run_cli(["eval", "--adapters", str(a), "--workspace", str(ws), "--allow-bin"], capsys)
    assert code == 2 and not marker.exists()
    assert_one_line(err, ["could not be read safely", "re-export"])
    assert snapshot(ws) == before
    torch.load(a / BIN, weights_only=False)  # the reference: an unsafe load runs the payload
    assert marker.exists()


def test_bin_with_opt_in_loads_the_same_factors(tiny_setup, tmp_path):
    base, dirs = tiny_setup
    a = shutil.copytree(dirs[0], tmp_path / "alpha")
    torch.save(load_file(a / WEIGHTS), a / BIN)
    (a / WEIGHTS).unlink()
    ref = load_adapters([dirs[0]]).adapters[0]
    got = load_adapters([a], allow_bin=True).adapters[0]
    assert set(got.factors) == set(ref.factors) and set(got.extra) == set(ref.extra)
    for m, f in ref.factors.items():
        assert torch.equal(got.factors[m].A, f.A) and torch.equal(got.factors[m].B, f.B)
        assert got.factors[m].scale == f.scale


def test_custom_code_base_not_executed_and_loads_only_with_opt_in(tiny_setup, tmp_path):
    from mergecore.bases import load_classifier_base

    base, _ = tiny_setup
    marker = tmp_path / "EXECUTED"
    custom = custom_code_base(base, tmp_path / "custom", marker)
    with pytest.raises(MergecoreError, match="--trust-remote-code"):
        load_classifier_base(str(custom))
    assert not marker.exists()
    cfg = json.loads((custom / "config.json").read_text())
    del cfg["auto_map"]
    (custom / "config.json").write_text(json.dumps(cfg))
    model, _ = load_classifier_base(str(custom))  # the same folder without auto_map loads
    assert type(model).__name__ == "BertForSequenceClassification" and not marker.exists()


# ----------------------------------------------------------------------------- the real entry point

SUBPROCESS_CASES = ["safetensors truncated", ".bin without --allow-bin", "base needs trust_remote_code"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_python_m_mergecore_exits_2_with_one_line(case, tiny_setup, tmp_path, seeded_ws):
    ws, before = seeded_ws
    paths, extra = build(case, tiny_setup, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "mergecore", "eval", "--adapters", *map(str, paths),
                           "--workspace", str(ws), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc.stderr, CASES[case][1])
    assert proc.stdout == ""
    assert snapshot(ws) == before
    assert not (tmp_path / "EXECUTED").exists()


# ----------------------------------------------------------------------------- task files


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


TASK_FILE_CASES = {  # name: (file name, content, Columns kwargs, words)
    "missing column": ("t.csv", "text,label\nfine movie,1\n", {"text": ("sentence",)},
                       ["missing column(s) sentence", "fix the column mapping"]),
    "unknown label": ("t.tsv", "sentence\tlabel\ngood\tpos\nbad\tmeh\n",
                      {"label_map": {"pos": 1, "neg": 0}}, ["row 3", "unknown label 'meh'", "label mapping"]),
    "label not a class id": ("t.csv", "sentence,label\ngood,positive\n", {},
                             ["label 'positive' is not a class id", "label mapping"]),
    "empty row text": ("t.csv", "sentence,label\ngood,1\n,0\n", {}, ["row 3", "empty text", "remove the row"]),
    "row too short": ("t.tsv", "sentence\tlabel\ngood\t1\nbad\n", {}, ["row 3", "too few columns"]),
    "not UTF-8": ("t.csv", b"sentence,label\ncaf\xe9,1\n", {}, ["not UTF-8", "offset", "re-save it as UTF-8"]),
    "header only (zero examples)": ("t.csv", "sentence,label\n", {}, ["holds no examples", "at least one row"]),
    "empty file": ("t.csv", "", {}, ["is empty", "header row"]),
    "JSONL broken line": ("t.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": \n', {},
                          ["line 2", "not valid JSON", "one JSON object per line"]),
    "JSONL not objects": ("t.jsonl", "[1, 2]\n", {}, ["line 1", "not a JSON object"]),
    "regression label not a number": ("t.csv", "sentence,label\ngood,high\n", {"numeric": True},
                                      ["not a number", "label column"]),
    "file does not exist": ("missing.csv", None, {}, ["does not exist", "file name"]),
}


@pytest.mark.parametrize("case", list(TASK_FILE_CASES))
def test_task_file_refused_with_one_line(case, tmp_path):
    from mergecore.data.taskfiles import Columns, load_split

    fname, content, cols, words = TASK_FILE_CASES[case]
    path = tmp_path / fname if content is None else write(tmp_path / fname, content)
    with pytest.raises(MergecoreError) as exc:
        load_split(path, Columns(**cols))
    msg = str(exc.value)
    assert "\n" not in msg and ";" in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


def test_task_file_label_ids_out_of_range_and_zero_example_split(tmp_path):
    from mergecore.data.taskfiles import Columns, file_task
    from mergecore.data.tasks import Split, Task

    train = write(tmp_path / "train.csv", "sentence,label\ngood,0\nbad,1\n")
    dev = write(tmp_path / "dev.csv", "sentence,label\ngood,0\nbad,7\n")
    with pytest.raises(MergecoreError, match=r"label ids \[7\] outside 0..1; fix the labels"):
        file_task("t", train, dev, Columns(), ("neg", "pos"))
    with pytest.raises(MergecoreError, match="empty calibration split; provide at least one example"):
        Task("t", ("neg", "pos"), Split(()), Split((("x",),), (0,)))
    with pytest.raises(MergecoreError, match="fewer than 2 labels"):
        Task("t", ("only",), Split((("x",),)), Split((("x",),), (0,)))


def test_glue_folder_missing_task_subfolder(tmp_path):
    from mergecore.data.glue import local_splits, spec

    with pytest.raises(MergecoreError, match="does not exist; the GLUE folder needs a"):
        local_splits(spec("sst2"), tmp_path)


# ----------------------------------------------------------------------------- export names


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "..", ".hidden", "a/b\\c", "", "x" * 500])
def test_export_head_file_names_stay_inside_the_folder(name, tmp_path):
    from mergecore.export.peft import head_files
    from mergecore.files import inside, safe_name

    s = safe_name(name)
    assert s and "/" not in s and "\\" not in s and not s.startswith(".") and len(s) <= 100
    rel = head_files([name])[name]
    assert inside(tmp_path, rel).parent == (tmp_path / "heads").resolve()


def test_export_inside_refuses_escaping_paths(tmp_path):
    from mergecore.files import inside

    for rel in ("../x", "heads/../../x", "/etc/passwd"):
        with pytest.raises(MergecoreError, match="escapes the export folder"):
            inside(tmp_path / "out", rel)


def test_export_zip_entries_stay_under_the_folder_name(tmp_path):
    from mergecore.files import zip_folder

    folder = tmp_path / "merged"
    (folder / "heads").mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "heads" / "t.safetensors").write_bytes(b"x")
    import io

    names = zipfile.ZipFile(io.BytesIO(zip_folder(folder))).namelist()
    assert sorted(names) == ["merged/adapter_config.json", "merged/heads/t.safetensors"]
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)


# ----------------------------------------------------------------------------- task files through the CLI

GOOD_TSV = "sentence\tlabel\ngood movie\t1\nbad film\t0\n"
GLUE_CASES = {  # name: (train.tsv, dev.tsv, words); None: the SST-2 folder is absent
    "GLUE dev missing column": (GOOD_TSV, "text\tlabel\ngood\t1\n", ["dev.tsv", "missing column(s) sentence"]),
    "GLUE dev unknown label": (GOOD_TSV, "sentence\tlabel\ngood\t1\nbad\t2\n", ["row 3", "unknown label '2'"]),
    "GLUE dev empty text row": (GOOD_TSV, "sentence\tlabel\ngood\t1\n\t0\n", ["row 3", "empty text"]),
    "GLUE train not UTF-8": ("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"), GOOD_TSV, ["train.tsv", "not UTF-8"]),
    "GLUE dev zero examples": (GOOD_TSV, "sentence\tlabel\n", ["dev.tsv", "holds no examples"]),
    "GLUE train empty file": ("", GOOD_TSV, ["train.tsv", "is empty"]),
    "GLUE folder missing": (None, None, ["SST-2 does not exist", "train.tsv"]),
}


@pytest.mark.parametrize("case", list(GLUE_CASES))
def test_cli_glue_folder_refused_with_one_line(case, tiny_setup, tmp_path, seeded_ws, capsys):
    ws, before = seeded_ws
    train, dev, words = GLUE_CASES[case]
    glue = tmp_path / "glue"
    glue.mkdir()
    if train is not None:
        (glue / "SST-2").mkdir()
        write(glue / "SST-2" / "train.tsv", train)
        write(glue / "SST-2" / "dev.tsv", dev)
    a = shutil.copytree(tiny_setup[1][0], tmp_path / "alpha")
    code, err = run_cli(["eval", "--adapters", str(a), "--glue", "sst2", "--glue-dir", str(glue),
                         "--workspace", str(ws)], capsys)
    assert code == 2
    assert_one_line(err, words)
    assert snapshot(ws) == before


def test_cli_more_glue_tasks_than_adapters(tiny_setup, tmp_path, seeded_ws, capsys):
    ws, before = seeded_ws
    glue = tmp_path / "glue"
    for folder in ("SST-2", "CoLA"):
        (glue / folder).mkdir(parents=True)
    write(glue / "SST-2" / "train.tsv", GOOD_TSV)
    write(glue / "SST-2" / "dev.tsv", GOOD_TSV)
    write(glue / "CoLA" / "train.tsv", "src\t1\t\tthe dog runs\n")  # CoLA has no header
    write(glue / "CoLA" / "dev.tsv", "src\t0\t*\tdog the runs\n")
    a = shutil.copytree(tiny_setup[1][0], tmp_path / "alpha")
    code, err = run_cli(["eval", "--adapters", str(a), "--glue", "sst2", "cola", "--glue-dir", str(glue),
                         "--workspace", str(ws)], capsys)
    assert code == 2
    assert_one_line(err, ["task", "adapter"])
    assert snapshot(ws) == before


# ----------------------------------------------------------------------------- broken base models


def broken_base(base: Path, out: Path, how: str) -> Path:
    """A copy of the base with truncated safetensors, or a pickled .bin carrying a payload."""
    shutil.copytree(base, out)
    st = out / "model.safetensors"
    if how == "truncated":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
    else:
        tensors = load_file(st)
        st.unlink()
        torch.save({"payload": Planted(out.parent / "EXECUTED"), **tensors}, out / "pytorch_model.bin")
    return out


@pytest.mark.parametrize("how", ["truncated", "pickle"])
def test_broken_base_weights_refused_by_load_classifier_base(how, tiny_setup, tmp_path):
    from mergecore.bases import load_classifier_base

    b = broken_base(tiny_setup[0], tmp_path / "base", how)
    with pytest.raises(MergecoreError, match="corrupt or not a plain state dict.*; re-download it"):
        load_classifier_base(str(b))
    assert not (tmp_path / "EXECUTED").exists()


@pytest.mark.parametrize("how", ["truncated", "pickle"])
def test_cli_broken_base_weights_exit_2(how, tiny_setup, tmp_path, seeded_ws, capsys):
    ws, before = seeded_ws
    b = broken_base(tiny_setup[0], tmp_path / "base", how)
    a = shutil.copytree(tiny_setup[1][0], tmp_path / "sentiment")
    edit_config(a, base_model_name_or_path=str(b))
    try:
        code, err = run_cli(["eval", "--adapters", str(a), "--workspace", str(ws)], capsys)
    finally:
        assert not (tmp_path / "EXECUTED").exists()
        assert snapshot(ws) == before
    assert code == 2
    assert_one_line(err, ["corrupt", "re-download"])


# ----------------------------------------------------------------------------- messages name real fixes


def flags_named_in_errors() -> dict[str, str]:
    """Every --flag inside a MergecoreError(...) call in mergecore/ (pip commands aside), with where it is."""
    import ast

    out = {}
    for f in sorted((ROOT / "mergecore").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MergecoreError":
                for c in ast.walk(node):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and "pip install" not in c.value:
                        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", c.value):
                            out.setdefault(flag, f"{f.relative_to(ROOT)}:{node.lineno}")
    return out


def cli_flags() -> set[str]:
    from mergecore.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0]
    return {o for p in sub.choices.values() for a in p._actions for o in a.option_strings}


def test_every_flag_an_error_message_names_exists():
    named, known = flags_named_in_errors(), cli_flags()
    assert len(named) >= 4 and "--allow-bin" in named and "--trust-remote-code" in named
    missing = {f: where for f, where in named.items() if f not in known}
    assert missing == {}, missing
