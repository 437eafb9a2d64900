"""Undefined numbers: NaN from evaluate.average / anp, '-' in every text table, null in JSON, never the best."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mergecore.cli.common import emit_json, score_table as cli_score_table
from mergecore.runs.folder import write_run_folder
from mergecore.runs.compare import compare_runs, run_rows, score_table
from mergecore.forward.evaluate import anp, average
from mergecore.numbers import as_float, dumps, fmt, json_safe, rank_key
from mergecore.runs.store import RunStore

NAN = float("nan")


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity tokens (what a strict JSON reader does)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON number {token}")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- evaluate


def test_average_and_anp_are_nan_when_undefined_and_plain_means_otherwise():
    assert math.isnan(average({})) and math.isnan(average({"a": NAN, "b": None}))
    assert average({"a": 50.0, "b": NAN, "c": 70.0}) == pytest.approx(60.0)
    experts = {"a": 80.0, "b": 0.0, "c": 50.0}
    assert math.isnan(anp({}, experts))
    assert math.isnan(anp({"b": 10.0}, experts))  # expert score 0: no ratio
    assert math.isnan(anp({"z": 10.0}, experts))  # no expert score for the task
    assert math.isnan(anp({"a": NAN, "c": None}, experts))
    assert anp({"a": 40.0, "b": 5.0, "c": 25.0}, experts) == pytest.approx(np.mean([40 / 80, 25 / 50]))


# ----------------------------------------------------------------------------- text and app tables


def test_cli_score_table_prints_a_dash_for_undefined_numbers():
    text = cli_score_table({"experts": {"gen": 0.0, "cls": 80.0}, "run": {"gen": NAN, "cls": None}},
                           {"gen": 0.0, "cls": 80.0})
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:]}
    assert rows["gen"] == ["0.00", "-"] and rows["cls"] == ["80.00", "-"]
    assert rows["average"] == ["40.00", "-"] and rows["ANP"] == ["1.000", "-"]
    assert "nan" not in text.lower() and "none" not in text.lower()


def test_compare_table_average_and_anp_rows_are_nan_and_print_as_dash():
    t = score_table({"experts": {"a": 80.0}, "empty": {"a": NAN}, "stored": {"a": None}}, {"a": 80.0})
    for col in ("empty", "stored"):
        assert math.isnan(t.cell("a", col)) and math.isnan(t.cell("average", col)) and math.isnan(t.cell("ANP", col))
    text = t.to_text()
    assert "nan" not in text.lower() and text.splitlines()[-1].split()[1:] == ["1.000", "-", "-"]


def test_app_score_frame_shows_a_dash_not_nan():
    from pages.ui.charts import score_frame, score_style

    result = {"scores": {"a": NAN, "b": None}, "baselines": {"experts": {"a": 80.0, "b": 60.0}}}
    df = score_frame(result)
    assert math.isnan(df.loc["average", "this run"]) and math.isnan(df.loc["ANP", "this run"])
    assert df.loc["ANP", "experts"] == pytest.approx(1.0)
    html = score_style(df).to_html()
    assert "nan" not in html.lower() and ">-<" in html


# ----------------------------------------------------------------------------- JSON


def test_json_never_carries_a_bare_nan():
    import torch

    obj = {"a": NAN, "b": [1.0, float("inf"), np.float32("nan")], "c": torch.tensor([NAN, 2.0]), "d": np.int64(3),
           "e": True, "f": "x"}
    assert json_safe(obj) == {"a": None, "b": [1.0, None, None], "c": [None, 2.0], "d": 3, "e": True, "f": "x"}
    assert strict_loads(dumps(obj)) == json_safe(obj)
    assert math.isnan(as_float(None)) and as_float("1") != as_float("1") and as_float(2) == 2.0
    assert fmt(NAN) == fmt(None) == fmt(float("inf")) == "-" and fmt(1.234, 1) == "1.2"


def test_emit_json_prints_null_for_nan(capsys):
    emit_json({"run": {"a": NAN, "b": 1.5}, "average": average({})})
    assert strict_loads(capsys.readouterr().out) == {"run": {"a": None, "b": 1.5}, "average": None}


def test_stored_nan_is_null_and_reads_back_as_undefined(tmp_path, capsys):
    """A run whose average is undefined: stored as null (no bare NaN in SQLite or run.json), listed
    with NaN, compared with '-', and never picked as the best run."""
    store = RunStore(tmp_path / "ws")
    good, bad = store.create("good", "static", {}), store.create("bad", "static", {})
    store.finish(good, "done", {"scores": {"a": 50.0}, "average": 50.0, "baselines": {"experts": {"a": 80.0}}})
    store.finish(bad, "done", {"scores": {"a": NAN}, "average": average({"a": NAN}), "anp": NAN})
    store.add_event(bad, "eval", 1, {"score": {"a": NAN}})
    with store._conn() as c:
        raw = [r[0] for r in c.execute("SELECT result FROM runs")] + [r[0] for r in c.execute("SELECT payload FROM events")]
    assert all("NaN" not in text for text in raw)
    assert store.get(bad).result["average"] is None and store.events(bad, "eval")[0]["score"] == {"a": None}
    rows = {r["name"]: r for r in run_rows(store.list())}
    assert math.isnan(rows["bad"]["average"]) and rows["good"]["average"] == 50.0
    c = compare_runs(store, [good, bad], show=("experts",))
    bad_label = [col for col in c.scores.columns if col.startswith("bad")][0]
    assert math.isnan(c.scores.cell("average", bad_label)) and "nan" not in c.scores.to_text().lower()
    assert max([bad, good], key=lambda i: rank_key(store.get(i).result["average"])) == good
    write_run_folder(tmp_path / "out", store, bad)
    assert strict_loads((tmp_path / "out" / "run.json").read_text())["result"]["average"] is None
    for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines():
        strict_loads(line)


def test_best_static_and_report_skip_undefined_averages():
    from scripts.study.report import table1
    from scripts.study.run import best_static

    rows = {"ties": {"0": {"a": NAN}}, "task_arithmetic": {"0": {"a": 40.0}}, "dare_ties": {"0": {"a": 30.0}}}
    assert best_static({"rows": rows}) == "task_arithmetic"
    assert best_static({"rows": {"ties": {"0": {"a": NAN}}, "task_arithmetic": {"0": {"a": 40.0}}}}) == "task_arithmetic"
    base = {"experts": {"a": 80.0}, "uniform": {"a": 50.0}, "pre-trained": {"a": 1.0}}
    lines = table1({"baselines": base, "rows": {"gen": {"0": {"a": None}}}, "seconds": {}})
    row = next(line for line in lines if line.startswith("| gen |")).split(" | ")
    assert row[2:5] == ["-", "-", "-"]
