"""Bad input in the app: the Workspace page shows one ``st.error`` line, keeps the demo kit
loaded and usable, leaves the run store unchanged, and runs nothing from a malicious file.

One AppTest session (module scope) goes through every case in turn, as a user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from streamlit.testing.v1 import AppTest

from mergecore.runs.store import RunStore

from .test_bad_input import CONFIG, WEIGHTS, BIN, Planted, custom_code_base, edit_config, edit_tensors, first

ROOT = Path(__file__).resolve().parents[2]
DEMO = ["sentiment", "topic", "acceptability", "paraphrase", "entailment"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from conftest import app_workspace

    with app_workspace(tmp_path_factory.mktemp("app_ws")) as ws:
        store = RunStore(ws)
        rid = store.create("seed", "learned", {})
        store.finish(rid, "done", {"average": 1.0})
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.run()
        assert not at.exception, at.exception
        yield at, ws


def runs(ws: Path) -> list:
    return [(r.id, r.status, r.updated) for r in RunStore(ws).list()]


def load(at: AppTest, folders: list[Path], kind: str = "demo tasks (by adapter name)", **widgets) -> str:
    """Type folders, pick the task source, click Load; the one error line shown."""
    at.text_area(key="adapter_text").set_value("\n".join(map(str, folders)))
    at.radio(key="task_kind").set_value(kind).run()
    for key, value in widgets.items():
        (at.text_area if key == "file_spec" else at.text_input)(key=key).set_value(value)
    at.button(key="load_adapters").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and errors[0].strip(), errors
    return errors[0]


def still_usable(at: AppTest) -> None:
    assert [t.value for t in at.title] == ["Workspace"]
    assert list(at.dataframe[0].value["adapter"]) == DEMO  # the demo kit stays loaded
    assert len(at.dataframe[2].value) == 5


def _copy(tiny_setup, tmp: Path, name: str) -> Path:
    return shutil.copytree(tiny_setup[1][0], tmp / name)


def _missing_config(a, tmp, base):
    (a / CONFIG).unlink()
    return "adapter_config.json is missing"


def _truncated(a, tmp, base):
    data = (a / WEIGHTS).read_bytes()
    (a / WEIGHTS).write_bytes(data[:100])
    return "corrupt or truncated"


def _pickle(a, tmp, base):
    tensors = load_file(a / WEIGHTS)
    (a / WEIGHTS).unlink()
    torch.save({"payload": Planted(tmp / "EXECUTED"), **tensors}, a / BIN)
    return "is a pickle"


def _nan(a, tmp, base):
    def poison(t):
        t[first(t, "lora_B")][0, 0] = float("nan")
        return t
    edit_tensors(a, poison)
    return "NaN or Inf"


def _rank0(a, tmp, base):
    edit_tensors(a, lambda t: {k: (v[:0] if "lora_A" in k else v[:, :0] if "lora_B" in k else v)
                               for k, v in t.items()})
    return "rank 0"


def _other_base(a, tmp, base):
    edit_config(a, base_model_name_or_path="someone/other-model")
    return None  # paired with an intact copy below: "different base models"


def _custom_code(a, tmp, base):
    custom_code_base(base, tmp / "custom-base", tmp / "EXECUTED")
    edit_config(a, base_model_name_or_path=str(tmp / "custom-base"))
    return "--trust-remote-code"


ADAPTER_CASES = {
    "config missing": _missing_config, "safetensors truncated": _truncated, "pickle (malicious)": _pickle,
    "NaN weights": _nan, "rank 0": _rank0, "different bases": _other_base, "custom-code base": _custom_code,
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_bad_adapter_shows_one_error_and_keeps_the_demo_kit(case, app, tiny_setup, tmp_path):
    at, ws = app
    before = runs(ws)
    a = _copy(tiny_setup, tmp_path, "sentiment")
    words = ADAPTER_CASES[case](a, tmp_path, tiny_setup[0])
    folders = [a]
    if words is None:  # two adapters, two bases
        folders, words = [a, _copy(tiny_setup, tmp_path, "topic")], "different base models"
    msg = load(at, folders)
    assert words.lower() in msg.lower(), msg
    still_usable(at)
    assert runs(ws) == before
    assert not (tmp_path / "EXECUTED").exists()


def test_missing_folder_shows_one_error(app, tmp_path):
    at, ws = app
    msg = load(at, [tmp_path / "nope"])
    assert "does not exist" in msg
    still_usable(at)


def test_after_an_error_loading_the_demo_kit_again_works(app, tmp_path):
    at, ws = app
    load(at, [tmp_path / "nope"])
    at.text_area(key="adapter_text").set_value("")  # back to the demo kit: no error
    at.radio(key="task_kind").set_value("demo tasks (by adapter name)").run()
    at.button(key="load_adapters").click().run()
    assert not at.exception and not at.error
    still_usable(at)


def test_bad_glue_folder_shows_one_error(app, tiny_setup, tmp_path):
    at, ws = app
    before = runs(ws)
    a = _copy(tiny_setup, tmp_path, "sst2")
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\tmaybe\n")
    msg = load(at, [a], "GLUE", glue_dir=str(tmp_path / "glue"))
    assert "unknown label 'maybe'" in msg
    still_usable(at)
    assert runs(ws) == before


FILE_SPEC_CASES = {  # name: (spec builder(train, eval) -> JSON text, words)
    "missing column": (lambda tr, ev: [{"train": tr, "eval": ev, "text": ["sentence"], "label": "label",
                                        "labels": ["neg", "pos"]}], "missing column(s) sentence"),
    "non-UTF-8 file": (lambda tr, ev: [{"train": tr, "eval": ev.replace("eval", "latin"), "text": ["text"],
                                        "label": "label", "labels": ["neg", "pos"]}], "not UTF-8"),
    "label id out of range": (lambda tr, ev: [{"train": tr, "eval": ev.replace("eval", "range"),
                                               "text": ["text"], "label": "label", "labels": ["neg", "pos"]}],
                              "outside 0..1"),
    "fewer specs than adapters": (lambda tr, ev: [], "one object per adapter"),
    "mapping not JSON": (None, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(FILE_SPEC_CASES))
def test_bad_task_files_show_one_error(case, app, tiny_setup, tmp_path):
    at, ws = app
    before = runs(ws)
    a = _copy(tiny_setup, tmp_path, "alpha")
    tr, ev = tmp_path / "train.csv", tmp_path / "eval.csv"
    tr.write_text("text,label\ngood movie,1\nbad film,0\n")
    ev.write_text("text,label\ngood movie,1\nbad film,0\n")
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    (tmp_path / "range.csv").write_text("text,label\ngood,1\nbad,5\n")
    build, words = FILE_SPEC_CASES[case]
    spec = "[{not json" if build is None else json.dumps(build(str(tr), str(ev)))
    msg = load(at, [a], "CSV / JSONL files", file_spec=spec)
    assert words.lower() in msg.lower(), msg
    still_usable(at)
    assert runs(ws) == before


MALFORMED_SPECS = {
    "object without 'eval'": '[{"train": "t.csv", "text": ["text"], "label": "label", "labels": ["a", "b"]}]',
    "list of strings": '["t.csv"]',
}


@pytest.mark.parametrize("case", list(MALFORMED_SPECS))
def test_malformed_column_mapping_shows_one_error(case, app, tiny_setup, tmp_path):
    at, ws = app
    a = _copy(tiny_setup, tmp_path, "alpha")
    load(at, [a], "CSV / JSONL files", file_spec=MALFORMED_SPECS[case])
    still_usable(at)


def test_a_column_mapping_nested_100000_levels_shows_one_error(app, tiny_setup, tmp_path):
    """Typed JSON is bounded like a file's: json.loads would raise RecursionError in the page."""
    at, ws = app
    a = _copy(tiny_setup, tmp_path, "alpha")
    msg = load(at, [a], "CSV / JSONL files", file_spec="[" * 100_000 + "]" * 100_000)
    assert "the column mapping nests arrays or objects deeper than" in msg, msg
    still_usable(at)
