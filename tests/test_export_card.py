"""Export without a model: the merge card and README (every number against its reference), reading a run
folder (each malformed folder names its problem), the compression report (dense SVD references), and the
parameter, name and target checks (each message names the problem)."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import datetime
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load, save_file

import mergecore
from mergecore.adapters import Adapter, AdapterSet, LoraFactors
from mergecore.analysis.spectra import energy_at_rank
from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.errors import MergecoreError
from mergecore.export.card import card_readme, loading_snippet, merge_card, run_coefficients
from mergecore.export.full import base_folder, bench_family
from mergecore.export.params import ExportParams
from mergecore.export.peft import (
    adapter_config,
    class_prefix,
    compress,
    exact_factors,
    head_files,
    pick_head,
    write_adapter,
)
from mergecore.export.writer import _write_heads, probability_change
from mergecore.files import _swap, atomic_folder, check_target, inside, safe_name, zip_folder
from mergecore.merges.base import ModuleMerge
from mergecore.runs.folder import RunSource, load_run

pytestmark = pytest.mark.usefixtures("one_thread")
MODULES = ["enc.0.q", "enc.1.q"]


def adapter_set() -> AdapterSet:
    """Two in-memory adapters on a (4 x 3) module pair: ranks 2 and 1, scales 0.5 and 2, one head."""
    g = torch.Generator().manual_seed(0)
    cfg = {"base_model_name_or_path": "org/tiny-base", "modules_to_save": ["classifier"]}

    def factors(r, scale):
        return {m: LoraFactors(torch.randn(r, 3, generator=g), torch.randn(4, r, generator=g), scale) for m in MODULES}

    return AdapterSet((
        Adapter("a", "/src/a", cfg, factors(2, 0.5), {"classifier.weight": torch.ones(2, 4)}, "a" * 64),
        Adapter("b", "/src/b", cfg, {**factors(1, 2.0), "enc.2.q": factors(3, 1.0)["enc.0.q"]}, {}, "0123456789abcdef"),
    ))


def task(name: str, labels: tuple, metric: str = "accuracy") -> Task:
    split = Split((("x",), ("y",)), (0, 0))
    return Task(name, labels, split, split, metric=metric)


def run_config(adapters: AdapterSet, **extra) -> dict:
    return {"adapters": [{"name": a.name, "sha256": a.sha256} for a in adapters.adapters], **extra}


# ----------------------------------------------------------------------------- run coefficients and card


def test_run_coefficients_collapse_only_identical_rows():
    def run(result, config=None):
        return RunSource("r", "n", "learned", config or {}, result, {})

    assert run_coefficients(run({"coefs": [[0.1, 0.2], [0.1, 0.2], [0.1, 0.2]]})) == [0.1, 0.2]  # task-wise
    assert run_coefficients(run({"coefs": [[0.6, 0.4]]})) == [0.6, 0.4]  # one module: its row
    layer = [[0.1, 0.2], [0.3, 0.4], [0.3, 0.4]]  # only rows 2 and 3 agree: every row is kept
    assert run_coefficients(run({"coefs": layer})) == layer
    assert run_coefficients(run({"coefs": [[0.3, 0.4], [0.3, 0.4], [0.1, 0.2]]})) == [[0.3, 0.4], [0.3, 0.4], [0.1, 0.2]]
    assert run_coefficients(run({}, {"weights": [0.7, 0.3]})) == [0.7, 0.3]  # static run
    assert run_coefficients(run({"coefs": []}, {"weights": [1.0]})) == [1.0]
    assert run_coefficients(run({})) is None


@pytest.mark.parametrize("mode,kind,family", [("compressed", "learned", "classifier"), ("exact", "static", "causal"),
                                              ("full", "learned", "seq2seq")])
def test_merge_card_records_every_field(mode, kind, family):
    adapters = adapter_set()
    tasks = TaskSet((task("sst2", ("neg", "pos")), task("topic", ("w", "s", "b"))))
    bench = SimpleNamespace(adapters=adapters, tasks=tasks, family=family,
                            base_name="" if family == "causal" else "local/base-copy")
    cfg = {"method": "learned" if kind == "learned" else "ties", "params": {"objective": "kl", "steps": 3},
           "weights": [0.25, 0.75],
           "tasks": [{"name": "sst2", "fingerprint": "f1", "metric": "accuracy", "extra": 1},
                     {"name": "topic", "fingerprint": "f2", "metric": "matthews"}]}
    result = {"status": "done", "coefs": [[0.5, 0.5], [0.2, 0.8], [0.2, 0.8]], "scores": {"sst2": 0.8, "topic": 0.6},
              "average": 0.7, "anp": 0.93}
    run = RunSource("20250101-abc", "my run", kind, cfg, result, {})
    report = {"energy": {"overall": 0.9}} if mode == "compressed" else {}
    files, ranks = {"sst2": "heads/sst2.safetensors"}, {"enc.0.q": 3, "enc.1.q": 3}
    before = time.time()
    card = merge_card(bench, run, ExportParams(mode=mode, rank=5), "topic", files, ranks, report)
    created = datetime.strptime(card.pop("created"), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert before - 1 <= created <= time.time() + 1
    assert card == {
        "format": "mergecore-merge-card/1", "mergecore_version": mergecore.__version__,
        "base_model": "org/tiny-base" if family == "causal" else "local/base-copy",
        "run": {"id": "20250101-abc", "name": "my run", "kind": kind, "status": "done"},
        "sources": [{"name": "a", "source": "/src/a", "sha256": "a" * 64, "ranks": [2], "target_modules": MODULES},
                    {"name": "b", "source": "/src/b", "sha256": "0123456789abcdef", "ranks": [1, 3],
                     "target_modules": MODULES + ["enc.2.q"]}],
        "method": cfg["method"], "parameters": {"objective": "kl", "steps": 3},
        "objective": "kl" if kind == "learned" else None,
        "coefficients": [[0.5, 0.5], [0.2, 0.8], [0.2, 0.8]],
        "data": [{"task": "sst2", "fingerprint": "f1", "metric": "accuracy"},
                 {"task": "topic", "fingerprint": "f2", "metric": "matthews"}],
        "scores": {"sst2": 0.8, "topic": 0.6}, "average": 0.7, "anp": 0.93,
        "export": {"mode": mode, "rank": 5 if mode == "compressed" else None, "family": family, "ranks": ranks,
                   "head": "topic" if family == "classifier" else None, "head_modules": ["classifier"],
                   "heads": files, "num_labels": {"sst2": 2, "topic": 3}, **report},
    }


def test_merge_card_of_a_bare_run():
    adapters = adapter_set()
    bench = SimpleNamespace(adapters=adapters, tasks=TaskSet((task("t", ("a", "b")),)), family=None, base_name="")
    card = merge_card(bench, RunSource("r", "r", "learned", {}, {}, {}), ExportParams(), "t", {}, {}, {})
    assert (card["method"], card["parameters"], card["objective"], card["coefficients"], card["data"]) == (
        None, None, None, None, [])
    assert (card["scores"], card["average"], card["anp"], card["run"]["status"]) == (None, None, None, None)
    assert card["export"]["family"] == "classifier" and card["export"]["head"] == "t"  # no family: a classifier


# ----------------------------------------------------------------------------- README


def readme_card(**export) -> dict:
    return {"mergecore_version": "9.9", "run": {"id": "r-1", "name": "ties run"}, "method": "ties", "objective": None,
            "base_model": "org/base",
            "sources": [{"name": "a", "sha256": "0123456789abcdef"}, {"name": "b", "sha256": "f" * 64}],
            "scores": {"sst2": 0.87654, "cola": float("nan")},
            "files": {"adapter_model.safetensors": "1", "heads/a.safetensors": "2"},
            "export": {"mode": "compressed", "rank": 4, "family": "classifier", "head": "a",
                       "heads": {"a": "heads/a.safetensors", "b": "heads/b.safetensors"}, "num_labels": {"a": 2, "b": 3},
                       "head_modules": ["classifier"], **export}}


def test_readme_numbers_match_the_card():
    card = readme_card(energy={"overall": 0.912345, "min": 0.5}, probability_change={"max": 0.000123456})
    lines = card_readme(card, "out").splitlines()
    assert lines[:8] == [
        "# Merged LoRA adapter: ties run", "",
        "Made by mergecore 9.9 from run `r-1` (method `ties`) on base model `org/base` (classifier).", "",
        "- export: **compressed** (rank 4), head in the adapter: `a`",
        "- sources: `a` (sha256 0123456789ab), `b` (sha256 ffffffffffff)",
        "- scores: sst2 0.88, cola -",
        "- retained energy: 0.9123 overall, 0.5000 worst module; "
        "largest label-probability change on calibration inputs: 0.0001235",
    ]
    assert lines[8:12] == ["", "Files: `README.md`, `adapter_model.safetensors`, `heads/a.safetensors`, "
                               "`merge_card.json`; `merge_card.json` holds the full record.",
                           "Each task's classifier head is in `heads/<task>.safetensors`.", ""]
    assert lines[12:15] == ["## Load it (transformers + PEFT only)", "", "```python"] and lines[-1] == "```"
    assert "num_labels=2" in card_readme(card, "out")


def test_readme_energy_line_with_generative_tasks_left_out():
    card = readme_card(energy={"overall": 1.0, "min": 0.25}, probability_change={"max": None, "left_out": ["g", "h"]})
    line = [x for x in card_readme(card, "out").splitlines() if x.startswith("- retained")]
    assert line == ["- retained energy: 1.0000 overall, 0.2500 worst module "
                    "(generative tasks left out of that report: g, h)"]
    card = readme_card(energy={"overall": 0.5, "min": 0.5}, probability_change={"max": 0.25, "left_out": ["g"]})
    line = [x for x in card_readme(card, "out").splitlines() if x.startswith("- retained")]
    assert line == ["- retained energy: 0.5000 overall, 0.5000 worst module; largest label-probability change on "
                    "calibration inputs: 0.25 (generative tasks left out of that report: g)"]


def test_readme_of_full_weights_and_of_an_lm():
    card = readme_card(mode="full", rank=None)
    card.update(objective="kl", scores=None, files=None)
    lines = card_readme(card, "out").splitlines()
    assert lines[0] == "# Merged model (full weights): ties run"
    assert lines[2] == "Made by mergecore 9.9 from run `r-1` (method `ties`, objective `kl`) on base model `org/base` (classifier)."
    assert lines[4:7] == ["- export: **full**, head in the model: `a`",
                          "- sources: `a` (sha256 0123456789ab), `b` (sha256 ffffffffffff)", ""]
    assert lines[7] == "Files: `README.md`, `merge_card.json`; `merge_card.json` holds the full record."
    assert "## Load it (transformers only)" in lines
    old = readme_card(mode="exact", rank=None)
    del old["export"]["family"]  # a card written before the family was recorded: a classifier
    assert "on base model `org/base` (classifier)." in card_readme(old, "out")
    assert "- export: **exact**, head in the adapter: `a`\n" in card_readme(old, "out")
    lm = readme_card(mode="exact", rank=None, family="causal", head=None, heads={})
    text = card_readme(lm, "out")
    assert "- export: **exact**\n" in text and "(causal)." in text and "heads/<task>" not in text
    assert "holds the full record.\n\n## Load it (transformers + PEFT only)\n" in text  # no heads line
    for readme in (text, card_readme(old, "out")):
        assert "\n\n```\n" not in readme and readme.endswith("\n```\n")  # the snippet ends where the block does


def test_card_shows_an_unset_start_value_as_1_over_k():
    from mergecore.export.card import shown_params

    assert shown_params({"method": "learned", "params": {"init": None, "lr": 0.02}}) == {"init": "1/K", "lr": 0.02}
    assert shown_params({"method": "learned", "params": {"init": 0.5}}) == {"init": 0.5}
    assert shown_params({"method": "ties", "params": {"init": None}}) == {"init": None}  # only a learned run's start
    assert shown_params({"method": "learned", "params": {"lr": 0.02}}) == {"lr": 0.02}
    assert shown_params({"method": "learned", "params": None}) is None and shown_params({}) is None


# ----------------------------------------------------------------------------- run folders


def write_folder(folder, meta=None, merged=None, coefs=None):
    folder.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        (folder / "run.json").write_text(meta if isinstance(meta, str) else json.dumps(meta, ensure_ascii=False),
                                         encoding="utf-8")
    if merged is not None:
        save_file(merged, str(folder / "merged.safetensors"))
    if coefs is not None:
        save_file(coefs, str(folder / "coefs.safetensors"))
    return folder


def test_run_folder_fields_and_merged_tensors(tmp_path):
    adapters = adapter_set()
    B, A, D = torch.randn(4, 2), torch.randn(2, 3), torch.randn(4, 3)
    meta = {"id": "20250101-x", "name": "Zürich merge", "kind": "static", "config": run_config(adapters, method="ties"),
            "result": {"scores": {"t": 0.5}}}
    run = load_run(write_folder(tmp_path / "run", meta, {"B::enc.0.q": B, "A::enc.0.q": A,
                                                          "dense::enc.1.q": D}), None, adapters)
    assert (run.id, run.name, run.kind, run.config, run.result) == (
        "20250101-x", "Zürich merge", "static", meta["config"], {"scores": {"t": 0.5}})
    assert torch.equal(run.merge["enc.0.q"].B, B) and torch.equal(run.merge["enc.0.q"].A, A)
    assert torch.equal(run.merge["enc.1.q"].dense, D) and set(run.merge) == {"enc.0.q", "enc.1.q"}
    # the minimal run.json: a numeric id, no name / kind / result
    bare = load_run(write_folder(tmp_path / "bare", {"id": 7, "config": {}}, {"dense::enc.1.q": D}), None, adapters)
    assert (bare.id, bare.name, bare.kind, bare.result) == ("7", "7", "", {})
    null = load_run(write_folder(tmp_path / "null", {"id": "n", "config": {}, "result": None},
                                        {"dense::enc.1.q": D}), None, adapters)
    assert null.result == {}


def test_run_folder_is_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    adapters = adapter_set()
    folder = write_folder(tmp_path / "run", {"id": "r", "name": "Zürich ✓", "config": {}},
                          {"dense::enc.1.q": torch.zeros(4, 3)})
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "cp1252")  # a Windows locale
    assert load_run(folder, None, adapters).name == "Zürich ✓"


def test_run_folder_coefficients_fold_into_the_sources(tmp_path):
    adapters = adapter_set()
    coefs = torch.tensor([[0.5, -1.0], [2.0, 0.25], [0.0, 3.0]])
    run = load_run(write_folder(tmp_path / "run", {"id": "r", "config": run_config(adapters)},
                                coefs={"coefs": coefs}), None, adapters)
    for l, name in enumerate(adapters.modules):  # delta = sum_k c_lk * scale_k * B_k A_k
        want = sum(coefs[l, k].double() * f.delta() for k, f in enumerate(adapters.factors(name)) if f is not None)
        torch.testing.assert_close(run.merge[name].delta(), want, rtol=1e-6, atol=1e-6)


def test_malformed_run_folders_name_the_problem(tmp_path):
    adapters = adapter_set()
    D = {"dense::enc.1.q": torch.zeros(4, 3)}

    def error(folder) -> str:
        with pytest.raises(MergecoreError) as exc:
            load_run(folder, None, adapters)
        return str(exc.value)

    def corrupt(folder, why):
        return (f"{folder / 'run.json'} is missing or corrupt ({why}); "
                "write the run folder again with `learn --out` / `merge --out`")

    for name, meta, why in [("none", None, "FileNotFoundError"), ("text", "{not json", "JSONDecodeError"),
                            ("noid", {"config": {}}, "KeyError"), ("noconfig", {"id": "r"}, "KeyError"),
                            ("list", ["id", "config"], "TypeError"), ("badconfig", {"id": "r", "config": [1]}, "TypeError")]:
        folder = write_folder(tmp_path / name, meta, D)
        assert error(folder) == corrupt(folder, why)
    folder = write_folder(tmp_path / "latin1", None, D)
    (folder / "run.json").write_bytes('{"id": "r", "name": "Zürich", "config": {}}'.encode("latin-1"))
    assert error(folder) == corrupt(folder, "UnicodeDecodeError")

    folder = write_folder(tmp_path / "empty", {"id": "r", "config": {}})
    assert error(folder) == "run r has no merged update (status done); pick a finished run"  # as for a stored run
    for name, coefs, got in [("shape", {"coefs": torch.zeros(2, 2)}, "(2, 2)"), ("key", {"gains": torch.zeros(3, 2)}, "no")]:
        folder = write_folder(tmp_path / name, {"id": "r", "config": {}}, coefs=coefs)
        assert error(folder) == f"run r was learned on other adapters ({got} coefficients); load its adapters"
    folder = write_folder(tmp_path / "cut", {"id": "r", "config": {}}, D)
    (folder / "merged.safetensors").write_bytes((folder / "merged.safetensors").read_bytes()[:20])
    with pytest.raises(Exception) as raised:  # what safetensors itself says about the cut file
        load((folder / "merged.safetensors").read_bytes())
    assert error(folder) == (f"{folder / 'merged.safetensors'} is corrupt or truncated ({raised.type.__name__}); "
                             "write the run folder again")

    other = {"adapters": [{"name": "a", "sha256": "0" * 64}, {"name": "b", "sha256": "1" * 64}]}
    folder = write_folder(tmp_path / "other", {"id": "run-9", "config": other}, D)
    assert error(folder) == ("run run-9 was made from adapters ['a', 'b'] with other contents than the loaded "
                             "['a', 'b']; load the run's adapters (same folders) before exporting")


# ----------------------------------------------------------------------------- compression report


def test_retained_energy_of_a_zero_delta_is_one():
    assert energy_at_rank(torch.zeros(3), 1) == 1.0
    # the top r singular values whatever the order (export's S comes from an SVD, already descending)
    assert energy_at_rank(torch.tensor([3.0, 4.0]), 1) == pytest.approx(16 / 25, abs=1e-12)


@pytest.mark.parametrize("scale", [1e-2, 10.0])  # total energy below and above 1
def test_compress_energy_matches_dense_svd(scale):
    g = torch.Generator().manual_seed(3)
    merge = {"f": ModuleMerge("lora-factors", B=scale * torch.randn(5, 3, generator=g), A=torch.randn(3, 4, generator=g)),
             "d": ModuleMerge("dense", dense=scale * torch.randn(4, 6, generator=g)),
             "z": ModuleMerge("dense", dense=torch.zeros(3, 3))}
    rank = 1
    factors, energy = compress(merge, rank)
    kept = total = 0.0
    for name, m in merge.items():
        S = torch.linalg.svdvals(m.delta())  # dense float64 reference
        e, k = float((S ** 2).sum()), float((S[:rank] ** 2).sum())
        assert energy["per_module"][name] == pytest.approx(k / e if e else 1.0, rel=1e-9)
        kept, total = kept + k, total + e
        B, A = factors[name]
        assert float(torch.linalg.matrix_norm(m.delta() - B.double() @ A.double()) ** 2) == pytest.approx(
            e - k, rel=1e-4, abs=1e-9 * scale ** 2)  # Eckart-Young: what the rank-r factors leave out
    assert energy["overall"] == pytest.approx(kept / total, rel=1e-9) and energy["overall"] < 1
    assert energy["min"] == pytest.approx(min(energy["per_module"].values())) and energy["min"] < 1


def test_compress_of_a_zero_merge_keeps_everything():
    _, energy = compress({"z": ModuleMerge("dense", dense=torch.zeros(2, 2)),
                          "y": ModuleMerge("lora-factors", B=torch.zeros(2, 1), A=torch.ones(1, 2))}, 1)
    assert energy == {"per_module": {"z": 1.0, "y": 1.0}, "overall": 1.0, "min": 1.0}



def test_compress_keeps_the_asked_rank_on_rank_deficient_modules():
    """Rank r means r directions in every module, zero ones included (a zero-rank module would make the
    adapter's rank_pattern give r=0, which PEFT refuses): only the module's own size caps it."""
    b = torch.tensor([[1.0], [2.0], [0.5], [-1.0]])
    merge = {"z": ModuleMerge("dense", dense=torch.zeros(3, 2)),
             "deficient": ModuleMerge("lora-factors", B=torch.cat([b, 2 * b], 1), A=torch.randn(2, 5)),  # rank 1
             "small": ModuleMerge("dense", dense=torch.randn(2, 6))}
    factors, _ = compress(merge, 2)
    assert {n: (tuple(B.shape), tuple(A.shape)) for n, (B, A) in factors.items()} == {
        "z": ((3, 2), (2, 2)), "deficient": ((4, 2), (2, 5)), "small": ((2, 2), (2, 6))}
    for name, m in merge.items():
        B, A = factors[name]
        torch.testing.assert_close(B.double() @ A.double(), m.delta(), rtol=0, atol=1e-5)


class FakeBench:
    """predict(): fixed label probabilities per source; records the device and arguments it was called with."""

    def __init__(self, tasks, device):
        self.tasks, self.device, self.calls = TaskSet(tasks), device, []
        self.num_tasks = len(tasks)

    def predict(self, source, split, limit=None):
        self.calls.append((split, limit, {t.device for B, A, D in source.terms.values() for t in (B, A, D)
                                          if t is not None}))
        shift = 0.01 * (next(iter(source.terms.values()))[2].shape[1] - 2)  # approx: 3 columns, full: 2
        out = []
        for t in self.tasks:
            if t.generative:
                out.append(None)
            else:
                n = t.num_labels
                out.append(torch.full((3, n), 1.0 / n) + shift * torch.arange(n, dtype=torch.float32))
        return out


def test_probability_change_is_the_largest_gap_on_calibration_inputs():
    bench = FakeBench((task("two", ("a", "b")), task("gen", (), metric="rouge1"), task("three", ("a", "b", "c"))),
                      torch.device("meta"))
    full, approx = ({"m": ModuleMerge("dense", dense=torch.zeros(2, n))} for n in (2, 3))
    change = probability_change(bench, full, approx, 5)
    # per task: max over labels of |0.01 * label index|
    assert change["per_task"] == {"two": pytest.approx(0.01), "three": pytest.approx(0.02)}
    assert change["max"] == pytest.approx(0.02) and change["samples"] == 5 and change["left_out"] == ["gen"]
    assert bench.calls == [("calibration", 5, {torch.device("meta")})] * 2  # on the bench's device
    gen = FakeBench((task("gen", (), metric="rouge1"),), "cpu")
    assert probability_change(gen, full, approx, 4) == {"per_task": {}, "max": None, "samples": 4, "left_out": ["gen"]}
    assert gen.calls == []


# ----------------------------------------------------------------------------- snippet, heads, folder writes


def test_snippet_of_a_single_head_adapter_swaps_nothing():
    card = readme_card(mode="exact", rank=None, heads={"a": "heads/a.safetensors"})
    code = loading_snippet(card, "out")
    assert "use_head" not in code and "load_file" not in code
    assert "num_labels=2, ignore_mismatched_sizes=True" in code and "ADAPTER = 'out'" in code
    compile(code, "snippet", "exec")
    assert loading_snippet(readme_card(mode="exact", rank=None, heads={}), "out") == code


def test_head_files_carry_task_and_labels(tmp_path):
    from safetensors import safe_open

    bench = SimpleNamespace(tasks=TaskSet((task("two", ("neg", "pos")), task("three", ("x", "y", "z")))))
    w = torch.randn(2, 4)
    heads = {"two": {"classifier.weight": w}, "three": {"classifier.weight": torch.ones(3, 4)}}
    _write_heads(tmp_path, heads, {"two": "heads/two.safetensors"}, bench)
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["two.safetensors"]
    _write_heads(tmp_path / "both", heads, {"two": "heads/2.safetensors", "three": "heads/3.safetensors"}, bench)
    assert sorted(p.name for p in (tmp_path / "both" / "heads").iterdir()) == ["2.safetensors", "3.safetensors"]
    with safe_open(str(tmp_path / "heads" / "two.safetensors"), "pt") as f:
        assert f.metadata() == {"task": "two", "num_labels": "2", "labels": '["neg", "pos"]'}
        assert torch.equal(f.get_tensor("classifier.weight"), w)


def test_failed_swap_restores_the_previous_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("previous")
    with pytest.raises(OSError):
        _swap(tmp_path / "missing", out)  # the rename of the new folder fails
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "kept.txt").read_text() == "previous"
    new = tmp_path / "new"
    new.mkdir()
    (new / "fresh.txt").write_text("new")
    _swap(new, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["fresh.txt"]


def test_zip_entries_are_compressed(tmp_path):
    import zipfile

    folder = tmp_path / "merged"
    (folder / "heads").mkdir(parents=True)
    (folder / "README.md").write_text("x" * 1000)
    (folder / "heads" / "a.safetensors").write_bytes(b"\0" * 1000)
    zf = zipfile.ZipFile(io.BytesIO(zip_folder(folder)))
    assert sorted(zf.namelist()) == ["merged/README.md", "merged/heads/a.safetensors"]
    assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    assert zf.read("merged/heads/a.safetensors") == b"\0" * 1000


# ----------------------------------------------------------------------------- parameters, names and targets


def test_export_params_name_what_is_wrong():
    for params, msg in [(ExportParams(mode="lossy"), "unknown export mode 'lossy'; valid modes: exact, compressed, full"),
                        (ExportParams(mode="compressed", rank=0),
                         "rank must be at least 1 (got 0); set --rank (compressed export) to a whole number >= 1"),
                        (ExportParams(samples=0), "samples must be at least 1 (got 0); set --samples to a whole number >= 1")]:
        with pytest.raises(MergecoreError, match=f"^{re.escape(msg)}$"):
            params.validate()
    assert ExportParams(mode="exact", rank=0).validate().rank == 0  # the rank only matters when compressing
    assert ExportParams(mode="compressed", rank=1, samples=1).validate().samples == 1


def test_names_and_targets(tmp_path):
    assert safe_name("x" * 150) == "x" * 100 and safe_name("..") == "task" and safe_name("-.a b") == "a_b"
    assert safe_name("X-ray") == "X-ray"  # only leading dots and dashes go
    assert safe_name("SST-2_v1.0") == "SST-2_v1.0" and safe_name("q/a é") == "q_a__"
    assert head_files(["a b", "c"]) == {"a b": "heads/a_b.safetensors", "c": "heads/c.safetensors"}
    with pytest.raises(MergecoreError, match=r"^task names \['a b', 'a_b'\] collide once made file-name safe; "
                                             r"rename the tasks$"):
        head_files(["a b", "a_b"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(MergecoreError, match=f"^export target {re.escape(str(tmp_path / 'file'))} is a file; "
                                             "choose a folder path$"):
        check_target(tmp_path / "file", True)
    with pytest.raises(MergecoreError, match=f"^export target {re.escape(str(tmp_path))} already exists; choose a "
                                             r"new folder or pass --force \(overwrite=True\)$"):
        check_target(tmp_path, False)
    assert check_target(tmp_path / "new", False) == (tmp_path / "new").resolve()
    with pytest.raises(MergecoreError, match=f"^cannot write into {re.escape(str(tmp_path / 'file'))} "
                                             r"\(File exists\); choose a writable folder$"):
        with atomic_folder(tmp_path / "file" / "out"):
            pass
    with pytest.raises(MergecoreError, match=r"^file name '\.\./x' escapes the export folder; use plain names$"):
        inside(tmp_path, "../x")


def test_load_run_without_a_workspace(tmp_path):
    with pytest.raises(MergecoreError, match=r"^no-such-run is neither a run folder nor a run id with a workspace; "
                                             r"pass --workspace$"):
        load_run("no-such-run", None, adapter_set())


def test_bench_family_and_base_folder(tmp_path):
    def bench(family=None, path=None):
        config = SimpleNamespace(_name_or_path=path)
        return SimpleNamespace(family=family, model=SimpleNamespace(model=SimpleNamespace(config=config)))

    assert [bench_family(bench(f)) for f in ("causal", "seq2seq", "classifier", "regression", None)] == [
        "causal", "seq2seq", "classifier", "classifier", "classifier"]
    assert bench_family(SimpleNamespace()) == "classifier"
    assert base_folder(bench(path=str(tmp_path))) == str(tmp_path)  # a local copy (--base-path)
    assert base_folder(bench(path=str(tmp_path / "missing"))) is None and base_folder(bench(path="")) is None
    assert base_folder(bench(path=None)) is None and base_folder(SimpleNamespace(model=object())) is None


def test_dense_runs_have_no_exact_form_and_heads_are_named_tasks():
    dense, factored = ModuleMerge("dense", dense=torch.ones(2, 2)), ModuleMerge("lora-factors", B=torch.ones(2, 1),
                                                                                 A=torch.ones(1, 2))
    with pytest.raises(MergecoreError, match=r"^this run is dense \(2 modules, e\.g\. TIES/DARE\): it has no exact LoRA "
                                             r"form; export it compressed \(--rank r\) or as full weights "
                                             r"\(--full-weights\)$"):
        exact_factors({"a": dense, "b": factored, "c": dense})
    B, A = exact_factors({"b": factored})["b"]
    assert torch.equal(B, torch.ones(2, 1)) and torch.equal(A, torch.ones(1, 2))
    bench = SimpleNamespace(tasks=TaskSet((task("sst2", ("a", "b")), task("cola", ("a", "b")))))
    assert pick_head(bench, "") == "sst2" and pick_head(bench, "cola") == "cola"
    with pytest.raises(MergecoreError, match=r"^unknown head task 'mnli'; choose one of sst2, cola$"):
        pick_head(bench, "mnli")


# ----------------------------------------------------------------------------- PEFT adapter config


@pytest.mark.parametrize("modules,heads,prefix", [
    (["bert.encoder.layer.0.q", "bert.encoder.layer.1.v"], ["classifier"], "bert."),
    (["model.layers.0.self_attn.q_proj"], ["score"], "model."),
    (["transformer.h.0.attn.c_attn"], ["transformer.ln_f"], ""),  # a head lives under it: not a class prefix
    (["model.layers.0.q"], ["model.head.dense"], ""),
    (["encoder.block.0.q", "decoder.block.0.q"], [], ""), (["encoder.block.0.q"], [], ""),  # structural names
    (["layers.0.q"], [], ""), (["0.q", "0.v"], [], ""), (["bert.q", "bert"], [], ""), (["q", "v"], [], ""),
])
def test_class_prefix(modules, heads, prefix):
    assert class_prefix(modules, heads) == prefix


def test_write_adapter_task_type_fan_in_and_key_layout(tmp_path):
    """The adapter carries the first source's task type, fan_in_fan_out when any source had it (GPT-2 Conv1D),
    and PEFT's key layout: with a task-class prefix (``bert.``) the factors twice, under the task class's
    names and the bare model's, so PEFT loads them on both classes; without one, once."""
    from peft import PeftConfig

    def adapter(name, **cfg):
        base = {"base_model_name_or_path": "org/base", "peft_type": "LORA", **cfg}
        f = {"bert.encoder.layer.0.q": LoraFactors(torch.ones(1, 3), torch.ones(4, 1), 1.0)}
        return Adapter(name, f"/src/{name}", base, f, {"classifier.weight": torch.ones(2, 4)})

    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(4, 2, generator=g), torch.randn(2, 3, generator=g)
    head = {"classifier.weight": torch.full((2, 4), 0.5), "classifier.bias": torch.zeros(2)}
    for sources, task_type, fan_in in (((("a", "SEQ_CLS", None), ("b", None, True)), "SEQ_CLS", True),
                                       ((("a", None, False), ("b", "SEQ_CLS", None)), None, False)):
        adapters = AdapterSet(tuple(adapter(n, task_type=t, fan_in_fan_out=f) for n, t, f in sources))
        out = tmp_path / f"{task_type}"
        out.mkdir()
        config = write_adapter(out, adapters, {"bert.encoder.layer.0.q": (B, A)}, head, "org/base")
        assert json.loads((out / "adapter_config.json").read_text()) == config
        assert (config["task_type"], config["fan_in_fan_out"]) == (task_type, fan_in)
        peft = PeftConfig.from_pretrained(str(out))  # PEFT reads it as written
        assert (peft.task_type, peft.fan_in_fan_out, peft.target_modules, peft.base_model_name_or_path) == (
            task_type, fan_in, {"encoder.layer.0.q"}, "org/base")
        tensors = load(out.joinpath("adapter_model.safetensors").read_bytes())
        assert sorted(tensors) == sorted(["base_model.model.classifier.bias", "base_model.model.classifier.weight"] + [
            f"base_model.model.{m}encoder.layer.0.q.lora_{w}.weight" for m in ("bert.", "") for w in "AB"])
        for m in ("bert.", ""):
            assert torch.equal(tensors[f"base_model.model.{m}encoder.layer.0.q.lora_A.weight"], A)
            assert torch.equal(tensors[f"base_model.model.{m}encoder.layer.0.q.lora_B.weight"], B)
        assert torch.equal(tensors["base_model.model.classifier.weight"], head["classifier.weight"])
    # no task-class prefix (T5-like names): the factors once
    plain = AdapterSet((Adapter("a", "/src/a", {"base_model_name_or_path": "org/base"},
                                {"encoder.block.0.q": LoraFactors(torch.ones(1, 3), torch.ones(4, 1), 1.0)}),))
    (tmp_path / "plain").mkdir()
    write_adapter(tmp_path / "plain", plain, {"encoder.block.0.q": (B, A)}, {}, "org/base")
    assert sorted(load((tmp_path / "plain" / "adapter_model.safetensors").read_bytes())) == [
        "base_model.model.encoder.block.0.q.lora_A.weight", "base_model.model.encoder.block.0.q.lora_B.weight"]


def test_adapter_config_is_a_scale_one_peft_config():
    from peft import LoraConfig

    def f(r):
        return torch.zeros(4, r), torch.zeros(r, 3)

    factors = {"bert.encoder.layer.0.q": f(4), "bert.encoder.layer.0.v": f(2), "bert.encoder.layer.1.q": f(4),
               "bert.encoder.layer.1.v": f(2), "bert.encoder.layer.1.o": f(1)}
    config = adapter_config("org/base", factors, ["classifier"], "SEQ_CLS")
    pattern = {r"encoder\.layer\.0\.v": 2, r"encoder\.layer\.1\.v": 2, r"encoder\.layer\.1\.o": 1}
    assert config == {  # r: the most common rank (the larger one on a tie), the others through the patterns
        "peft_type": "LORA", "task_type": "SEQ_CLS", "base_model_name_or_path": "org/base", "r": 4, "lora_alpha": 4,
        "rank_pattern": pattern, "alpha_pattern": pattern,
        "target_modules": sorted(m.removeprefix("bert.") for m in factors), "modules_to_save": ["classifier"],
        "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True}
    peft = LoraConfig(**{k: v for k, v in config.items() if k != "peft_type"})  # PEFT accepts it as it is
    assert (peft.r, peft.lora_alpha, peft.rank_pattern, peft.alpha_pattern) == (4, 4, pattern, pattern)
    lm = adapter_config("gpt2", {"h.0.attn.c_attn": f(3)}, [], "CAUSAL_LM", fan_in_fan_out=True)
    assert (lm["r"], lm["rank_pattern"], lm["modules_to_save"], lm["fan_in_fan_out"], lm["target_modules"]) == (
        3, {}, None, True, ["h.0.attn.c_attn"])
    assert adapter_config("b", {"x.q": f(3)}, [], None)["fan_in_fan_out"] is False
    common = adapter_config("b", {"x.a": f(2), "x.b": f(2), "x.c": f(4)}, [], None)  # most common, not largest
    assert (common["r"], common["rank_pattern"], common["target_modules"]) == (2, {"c": 4}, ["a", "b", "c"])
