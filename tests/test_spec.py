"""RunSpec (mergecore/forward/spec.py): one value for what a run is made from. For every model family x every task
source, the spec a bench was opened from round-trips through the run store and a run folder, and the spec read
back reopens the same inputs (adapter hashes, task fingerprints, modules): compared with the bench that made the
run, not with a number the code printed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import label_task_files, make_adapter, tiny_bert_base
from test_verbalizer import TINY, make_adapters

from mergecore.data.sources import TaskSource
from mergecore.errors import MergecoreError
from mergecore.forward.spec import AdapterRef, RunSpec, bench_config, bench_key, spec_of
from mergecore.learn.params import LearnParams
from mergecore.merges import parse_params
from mergecore.placement import LoadParams
from mergecore.runs.folder import open_run, write_run_folder
from mergecore.runs.runner import create_learning_run, create_static_run
from mergecore.runs.store import RunStore

GLUE = TINY.parent / "glue"  # ../shared/data/glue, found where the tiny checkpoints are
pytestmark = pytest.mark.skipif(not (TINY.is_dir() and GLUE.is_dir()), reason="../shared/data not found")
DEMO_NAMES = ("sentiment", "acceptability")  # two-label demo tasks: the tiny classifier heads have two labels
FAMILIES = ("bert", "t5", "llama")
SOURCES = ("demo", "glue", "files")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two PEFT adapters per family, in folders named after two-label demo tasks."""
    root = tmp_path_factory.mktemp("spec")
    out = {}
    for family in FAMILIES:
        if family == "bert":
            base = tiny_bert_base(root / "bert-base")
            made = [make_adapter(base, root / f"bert{k}", 2, 2, ["query", "value"], seed=k) for k in range(2)]
        else:
            made = make_adapters(family, root / family)
        out[family] = [shutil.copytree(d, root / family / "named" / name) for d, name in zip(made, DEMO_NAMES)]
    return root, out


def source(kind: str, root: Path) -> TaskSource:
    if kind == "glue":
        return TaskSource("glue", glue_dir=str(GLUE), names=("rte", "sst2"), calibration=4, eval_size=6)
    if kind == "files":
        return TaskSource("files", mapping=str(label_task_files(root / "files", label_counts=(2, 2))))
    return TaskSource()


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_spec_round_trips_through_the_store_and_a_run_folder(adapters, family, kind, tmp_path):
    root, dirs = adapters
    spec = RunSpec.of(dirs[family], tasks=source(kind, root), device="cpu")
    bench = spec.open()
    assert bench.spec.adapters == tuple(AdapterRef(str(Path(d).resolve()), a.name, a.sha256)
                                        for d, a in zip(dirs[family], bench.adapters.adapters))
    assert bench.spec.tasks.kind == kind and bench.family == {"bert": "classifier", "t5": "seq2seq"}.get(family, "causal")
    from mergecore.data.sources import load_tasks  # the source's own tasks, read without the spec

    want_tasks = load_tasks(bench.adapters.names, source(kind, root))
    assert [t.fingerprint() for t in bench.tasks] == [t.fingerprint() for t in want_tasks]
    assert RunSpec.from_record(json.loads(json.dumps(bench.spec.to_record())), device="cpu") == bench.spec

    store = RunStore(tmp_path / "ws")
    params = parse_params("ties", ["density=0.5"])
    static = create_static_run(bench, "ties", params, store, [0.7, 0.4])
    learned = create_learning_run(bench, LearnParams(steps=3, init=1 / 3), store)
    write_run_folder(tmp_path / "run", store, static)
    for run_id, cls, want in ((static, type(params), replace(bench.spec, method="ties", params=params, weights=(0.7, 0.4))),
                              (learned, LearnParams, replace(bench.spec, method="learned",
                                                             params=LearnParams(steps=3, init=1 / 3)))):
        assert RunSpec.from_record(store.get(run_id).config, cls, device="cpu") == want
        assert RunSpec.from_record(store.get(run_id).config, device="cpu") == replace(want, params=None)
    folder_store, rec = open_run(tmp_path / "run", store)
    assert rec.id == static and RunSpec.from_record(rec.config, type(params), device="cpu").params == params

    again = replace(RunSpec.from_record(rec.config, device="cpu"), method="", params=None, weights=None).open()
    assert again.spec == bench.spec  # the same folders, hashes, tasks and base
    assert bench_config(again) == bench_config(bench) and bench_key(again) == bench_key(bench)


def test_the_record_keeps_the_config_format_runs_already_have(adapters, tmp_path):
    """Keys and values as runs recorded them before RunSpec: stored runs and cache keys stay valid."""
    _, dirs = adapters
    bench = RunSpec.of(dirs["bert"], tasks=TaskSource(), device="cpu").open()
    config = bench_config(bench, "ties", parse_params("ties", []), [1.0, 1.0])
    assert set(config) == {"base_model", "adapters", "task_source", "tasks", "modules", "method", "params", "weights"}
    assert config["adapters"] == [{"name": a.name, "source": str(Path(d).resolve()), "sha256": a.sha256}
                                  for d, a in zip(dirs["bert"], bench.adapters.adapters)]
    assert config["task_source"] == {"kind": "demo"} and config["weights"] == [1.0, 1.0]
    assert config["base_model"] == bench.base_name == bench.adapters.base_model
    assert "load" not in config and "weights" not in bench_config(bench, "learned", LearnParams())
    assert bench_config(bench, "ties", parse_params("ties", []))["weights"] is None  # no weights given: null
    placed = replace(bench.spec, load=LoadParams(dtype="float32"))
    assert placed.to_record()["load"] == {"dtype": "float32", "quantize": None, "device_map": None}
    assert RunSpec.from_record(placed.to_record(), device="cpu") == placed
    local = replace(bench.spec, base_path="/models/base", family="classifier")  # recorded only when given
    assert {k: local.to_record()[k] for k in ("base_path", "family")} == {"base_path": "/models/base",
                                                                          "family": "classifier"}
    assert RunSpec.from_record(local.to_record(), device="cpu") == local
    assert not {"base_path", "family", "device"} & set(bench.spec.to_record())


def test_paths_are_resolved_as_the_record_writes_them(adapters, tmp_path):
    """A GLUE folder or task mapping reached through a symlink or a relative path: the opened spec holds the
    resolved path its record holds, so it round-trips (found by the mutation run from a symlinked copy)."""
    root, dirs = adapters
    (tmp_path / "glue").symlink_to(GLUE)
    mapping = label_task_files(root / "files", label_counts=(2, 2))
    (tmp_path / "tasks.json").symlink_to(mapping)
    for tasks, want in ((TaskSource("glue", glue_dir=str(tmp_path / "glue"), names=("rte", "sst2"), calibration=4,
                                    eval_size=6), str(GLUE.resolve())),
                        (TaskSource("files", mapping=str(tmp_path / "tasks.json")), str(mapping.resolve()))):
        bench = RunSpec.of(dirs["bert"], tasks=tasks, device="cpu").open()
        assert (bench.spec.tasks.glue_dir or bench.spec.tasks.mapping) == want
        assert RunSpec.from_record(bench.spec.to_record(), device="cpu") == bench.spec


def test_a_bench_opened_directly_records_what_it_shows(adapters, monkeypatch):
    """A bench opened from an AdapterSet and a TaskSet (no spec): the config runs have always recorded (adapter
    folders absolute, even when given relative), no task source; the baselines' cache key is that config's hash."""
    import hashlib

    from mergecore.adapters import load_adapters
    from mergecore.data.sources import load_tasks
    from mergecore.forward.workbench import open_workbench

    root, dirs = adapters
    monkeypatch.chdir(root / "bert" / "named")
    ad = load_adapters(list(DEMO_NAMES))  # relative folders
    bench = open_workbench(ad, load_tasks(ad.names), device="cpu")
    assert bench.spec is None
    assert bench_config(bench) == {
        "base_model": bench.base_name,
        "adapters": [{"name": n, "source": str(Path(d).resolve()), "sha256": a.sha256}
                     for n, d, a in zip(DEMO_NAMES, dirs["bert"], ad.adapters)],
        "tasks": [{"name": t.name, "fingerprint": t.fingerprint(), "metric": t.metric} for t in bench.tasks],
        "modules": ad.modules}
    assert bench_key(bench) == "baselines:" + hashlib.sha256(
        json.dumps(bench_config(bench), sort_keys=True).encode()).hexdigest()[:24]  # the keys stores already hold
    opened = RunSpec.of(list(DEMO_NAMES), device="cpu").open()  # relative folders recorded absolute
    assert [a.source for a in opened.spec.adapters] == [str(Path(d).resolve()) for d in dirs["bert"]]
    assert bench_key(bench) != bench_key(opened)  # the task source is part of the inputs


def test_open_hands_every_field_to_the_loaders(adapters, monkeypatch):
    """What the spec says reaches ``open_workbench`` (device, opt-in, family, local base, base loading)."""
    import mergecore.forward.spec as spec_module

    _, dirs = adapters
    seen = {}
    monkeypatch.setattr(spec_module, "open_workbench", lambda adapters, tasks, **kw: seen.update(kw))
    load = LoadParams(dtype="bfloat16")
    RunSpec.of(dirs["bert"], device="cuda:7", trust_remote_code=True, family="seq2seq", base_path="/b",
               load=load).open()
    assert {k: v for k, v in seen.items() if k != "spec"} == {"device": "cuda:7", "trust_remote_code": True,
                                                             "family": "seq2seq", "base_path": "/b", "load": load}
    RunSpec.of(dirs["bert"]).open()
    assert (seen["device"], seen["trust_remote_code"], seen["family"], seen["base_path"]) == ("auto", False, None, None)


def test_a_bench_without_a_spec_keeps_hub_ids_and_its_loading():
    from types import SimpleNamespace as NS

    bench = NS(spec=None, base_name="org/base", load=LoadParams(dtype="float16"),
               adapters=NS(adapters=[NS(source="org/lora-a", name="a", sha256="0" * 64)]))
    assert spec_of(bench) == RunSpec((AdapterRef("org/lora-a", "a", "0" * 64),), tasks=None, base_model="org/base",
                                     load=LoadParams(dtype="float16"))


def test_from_record_reads_partial_and_odd_records():
    assert RunSpec.from_record(None) == RunSpec.from_record([1]) == RunSpec.from_record({}) == RunSpec(tasks=None)
    assert RunSpec.from_record({"adapters": [{"name": "a"}, "junk"]}).adapters == (AdapterRef("", "a", ""),)
    learned = {"method": "learned", "params": {"steps": 3}}
    assert RunSpec.from_record(learned).params is None  # a learned run's params need their class
    assert RunSpec.from_record(learned, LearnParams).params == LearnParams(steps=3)
    assert RunSpec.from_record({"method": "ties"}).params is None and RunSpec.from_record({"method": "ties"}).weights is None
    old = {"method": "renamed_method", "params": {"gone_field": 1}, "weights": [1, 2],
           "load": {"dtype": "bfloat16", "future_field": True}}  # a run recorded by another version
    assert RunSpec.from_record(old) == RunSpec(tasks=None, method="renamed_method", weights=(1, 2),
                                               load=LoadParams(dtype="bfloat16"))


def test_overrides_reach_the_loaders(adapters, tmp_path):
    """A base-model override, a local base folder and the family (hub-named adapters opened offline), and the .bin
    opt-in, all from the spec; the record reopens the same base."""
    import torch
    from safetensors.torch import load_file

    _, dirs = adapters
    spec = RunSpec.of(dirs["t5"], base_model="google/flan-t5-base", device="cpu")  # as FusionBench names it
    with pytest.raises(MergecoreError, match="google/flan-t5-base"):
        spec.open()
    bench = replace(spec, base_path=str(TINY / "t5"), family="seq2seq").open()
    assert bench.base_name == bench.adapters.base_model == bench.spec.base_model == "google/flan-t5-base"
    assert bench.family == "seq2seq" and bench.spec.base_path == str(TINY / "t5")
    again = RunSpec.from_record(bench.spec.to_record(), device="cpu").open()
    assert again.spec == bench.spec and bench_key(again) == bench_key(bench)
    pickled = shutil.copytree(dirs["bert"][1], tmp_path / "acceptability")
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(MergecoreError, match="--allow-bin"):
        RunSpec.of([dirs["bert"][0], pickled], device="cpu").open()
    opened = RunSpec.of([dirs["bert"][0], pickled], device="cpu", allow_bin=True).open()
    assert opened.adapters.names == list(DEMO_NAMES)


def test_a_recorded_adapter_that_changed_is_refused(adapters, tmp_path):
    """Reopening a run (``--run``, a worker's job) loads what the run recorded or says which adapter changed."""
    _, dirs = adapters
    copies = [shutil.copytree(d, tmp_path / Path(d).name) for d in dirs["bert"]]
    recorded = RunSpec.of(copies, device="cpu").open().spec
    assert RunSpec.from_record(recorded.to_record(), device="cpu").open().spec == recorded
    data = bytearray((copies[1] / "adapter_model.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # one float32 of the last tensor is now 1.0
    (copies[1] / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(MergecoreError) as exc:
        RunSpec.from_record(recorded.to_record(), device="cpu").open()
    now = RunSpec.of(copies, device="cpu").open().spec.adapters[1].sha256
    assert str(exc.value) == (f"adapter 'acceptability' in {recorded.adapters[1].source} changed since the run was "
                              f"made (sha256 {recorded.adapters[1].sha256[:12]}..., now {now[:12]}...); restore it, "
                              "or pass --adapters DIR ... to use other adapters")


def test_a_spec_without_adapters_is_one_line():
    with pytest.raises(MergecoreError, match=r"^a run needs adapters; pass --adapters DIR \.\.\. \(or --demo"):
        RunSpec().open()
