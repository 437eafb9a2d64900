"""Export: the written folder, loaded by plain PEFT / transformers, reproduces mergecore's merged model."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from test_learn import tiny_bench
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from mergecore.adapters import AdapterSet
from mergecore.errors import MergecoreError
from mergecore.export.full import full_model
from mergecore.export.params import ExportParams
from mergecore.export.writer import export_run
from mergecore.files import MARKER, inside, safe_name, zip_folder
from mergecore.learn.params import LearnParams
from mergecore.merged import MergedSource
from mergecore.runs.folder import load_run
from mergecore.runs.runner import run_learning, run_static
from mergecore.runs.store import RunStore

RTOL = 1e-5


@pytest.fixture(scope="module")
def env(tiny_setup, tmp_path_factory):
    """A tiny workbench and a store with learned (task-, layer-wise) and static (core-space, dense) runs."""
    bench = tiny_bench(tiny_setup)
    store = RunStore(tmp_path_factory.mktemp("ws"))
    runs = {}
    for gran in ("task", "layer"):
        params = LearnParams(granularity=gran, steps=3, lr=0.2, batch_size=4, samples=12, eval_every=0)
        runs[gran], _ = run_learning(bench, params, store)
    runs["tsv_m"], _ = run_static(bench, "tsv_m", None, store)
    runs["ties"], _ = run_static(bench, "ties", None, store)
    return bench, store, runs, tiny_setup[0]


def set_head(pm: PeftModel, head_file) -> None:
    """Plain torch: replace the active modules_to_save copy of the classifier by a file's head."""
    state = load_file(str(head_file))
    out_f, in_f = state["classifier.weight"].shape
    lin = torch.nn.Linear(in_f, out_f)
    lin.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    pm.base_model.model.classifier.modules_to_save["default"] = lin


@torch.no_grad()
def model_probs(model, bench, k: int, limit=None) -> torch.Tensor:
    enc = bench.encoded(k, "calibration", limit)
    return torch.softmax(model(**enc.tensors).logits.float(), -1)


def peft_probs(folder, bench, base_dir, limit=None) -> list[torch.Tensor]:
    """Each task's label probabilities from PEFT alone: fresh base + adapter + that task's head file."""
    card = json.loads((folder / "merge_card.json").read_text())
    n_head = card["export"]["num_labels"][card["export"]["head"]]
    base = BertForSequenceClassification.from_pretrained(base_dir, num_labels=n_head, ignore_mismatched_sizes=True)
    pm = PeftModel.from_pretrained(base, folder).eval()
    out = []
    for k, task in enumerate(bench.tasks.names):
        set_head(pm, folder / card["export"]["heads"][task])
        out.append(model_probs(pm, bench, k, limit))
    return out


def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float(((x - y).abs() / y.abs().clamp_min(1e-12)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["task", "layer", "tsv_m"])
def test_exact_export_loads_in_plain_peft(env, tmp_path, kind):
    bench, store, runs, base_dir = env
    run = load_run(runs[kind], store, bench.adapters)
    res = export_run(bench, run, tmp_path / "out", ExportParams(head="beta"))
    expected = bench.predict(MergedSource(run.merge), "calibration")
    got = peft_probs(res.path, bench, base_dir)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=1e-7)
    config = json.loads((res.path / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] and config["alpha_pattern"] == config["rank_pattern"]
    # named without the task class's prefix, so the adapter also loads on the bare encoder
    assert set(config["target_modules"]) == {m.removeprefix("bert.") for m in bench.adapters.modules}
    if kind != "tsv_m":  # concatenation: rank = sum of the source ranks on each module
        for name in bench.adapters.modules:
            want = sum(f.rank for f in bench.adapters.factors(name) if f is not None)
            assert res.card["export"]["ranks"][name] == want
    assert config["rank_pattern"], "tiny adapters give different ranks per module"
    tensors = load_file(str(res.path / "adapter_model.safetensors"))
    heads = {t: load_file(str(res.path / f)) for t, f in res.card["export"]["heads"].items()}
    torch.testing.assert_close(tensors["base_model.model.classifier.weight"], heads["beta"]["classifier.weight"])
    assert set(heads) == set(bench.tasks.names)


def test_card_records_sources_method_and_data(env, tmp_path):
    bench, store, runs, _ = env
    rec = store.get(runs["layer"])
    res = export_run(bench, load_run(rec.id, store, bench.adapters), tmp_path / "out")
    card = json.loads((res.path / "merge_card.json").read_text())
    assert [s["sha256"] for s in card["sources"]] == [a.sha256 for a in bench.adapters.adapters]
    assert [d["fingerprint"] for d in card["data"]] == [t.fingerprint() for t in bench.tasks]
    assert card["method"] == "learned" and card["objective"] == rec.config["params"]["objective"]
    assert card["coefficients"] == rec.result["coefs"] and card["scores"] == rec.result["scores"]
    assert card["mergecore_version"] and card["base_model"] == bench.adapters.base_model
    assert card["run"] == {"id": rec.id, "name": rec.name, "kind": rec.kind, "status": rec.result.get("status")}
    import hashlib

    on_disk = {p.relative_to(res.path).as_posix() for p in res.path.rglob("*") if p.is_file()}
    assert set(card["files"]) == on_disk - {"merge_card.json", "README.md"}  # every file but the two that list them
    for name, digest in card["files"].items():
        assert hashlib.sha256((res.path / name).read_bytes()).hexdigest() == digest
    config_text = (res.path / "adapter_config.json").read_text()
    assert json.loads(config_text)["base_model_name_or_path"] == bench.adapters.base_model  # PEFT's default base
    for text in (config_text, (res.path / "merge_card.json").read_text()):
        assert text.startswith('{\n  "') and json.dumps(json.loads(text), indent=2) == text  # indented for people
    readme = (res.path / "README.md").read_text()
    assert "PeftModel.from_pretrained" in readme and card["snippet"].strip() in readme


def test_readme_snippet_runs_and_swaps_heads(env, tmp_path, monkeypatch):
    bench, store, runs, _ = env
    run = load_run(runs["task"], store, bench.adapters)
    res = export_run(bench, run, tmp_path / "merged", ExportParams(head="alpha"))
    code = re.search(r"```python\n(.*?)```", (res.path / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # loads with PEFT, then swaps in the next task's head
    k = bench.tasks.names.index("beta")
    expected = bench.predict(MergedSource(run.merge), "calibration")[k]
    torch.testing.assert_close(model_probs(scope["model"], bench, k), expected, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("kind,rank", [("layer", 1), ("tsv_m", 2), ("ties", 2)])
def test_compressed_report_is_recomputed(env, tmp_path, kind, rank):
    bench, store, runs, base_dir = env
    run = load_run(runs[kind], store, bench.adapters)
    res = export_run(bench, run, tmp_path / "out", ExportParams(mode="compressed", rank=rank, samples=8))
    ex = res.card["export"]
    assert ex["probability_change"]["samples"] == 8
    tensors = load_file(str(res.path / "adapter_model.safetensors"))
    for name, m in run.merge.items():
        S = torch.linalg.svdvals(m.delta())  # dense float64 reference
        assert ex["energy"]["per_module"][name] == pytest.approx(float((S[:rank] ** 2).sum() / (S ** 2).sum()), abs=1e-9)
        A = tensors[f"base_model.model.{name}.lora_A.weight"]
        assert A.shape[0] == min(rank, m.rank if m.is_factored else min(m.dense.shape))
        B = tensors[f"base_model.model.{name}.lora_B.weight"]
        best = torch.linalg.matrix_norm(m.delta() - (B.double() @ A.double()))  # Eckart-Young: the optimum
        assert float(best) == pytest.approx(float((S[rank:] ** 2).sum().sqrt()), rel=1e-4, abs=1e-6)
    assert min(ex["energy"]["per_module"].values()) < 1.0
    full = bench.predict(MergedSource(run.merge), "calibration", limit=8)
    got = peft_probs(res.path, bench, base_dir, limit=8)
    change = {t: float((g - f).abs().max()) for t, g, f in zip(bench.tasks.names, got, full)}
    for t in bench.tasks.names:
        assert ex["probability_change"]["per_task"][t] == pytest.approx(change[t], abs=1e-5)
    assert ex["probability_change"]["max"] == pytest.approx(max(change.values()), abs=1e-5)


def test_compressed_at_full_rank_is_exact(env, tmp_path):
    bench, store, runs, _ = env
    run = load_run(runs["task"], store, bench.adapters)
    res = export_run(bench, run, tmp_path / "out", ExportParams(mode="compressed", rank=64, samples=4))
    assert res.card["export"]["energy"]["min"] == pytest.approx(1.0, abs=1e-12)
    assert res.card["export"]["probability_change"]["max"] < 1e-5


@pytest.mark.parametrize("kind", ["ties", "layer"])
def test_full_weights_match_merged_model(env, tmp_path, kind, monkeypatch):
    bench, store, runs, _ = env
    run = load_run(runs[kind], store, bench.adapters)
    res = export_run(bench, run, tmp_path / "full", ExportParams(mode="full", head="gamma"))
    model = AutoModelForSequenceClassification.from_pretrained(res.path).eval()
    k = bench.tasks.names.index("gamma")
    expected = bench.predict(MergedSource(run.merge), "calibration")[k]
    torch.testing.assert_close(model_probs(model, bench, k), expected, rtol=1e-4, atol=1e-6)
    assert (res.path / "heads" / "alpha.safetensors").is_file() and not (res.path / "adapter_config.json").exists()
    assert model.config.id2label == dict(enumerate(bench.tasks[k].label_names))
    assert model.config.label2id == {n: i for i, n in enumerate(bench.tasks[k].label_names)}
    code = re.search(r"```python\n(.*?)```", (res.path / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # transformers alone loads the merged model
    torch.testing.assert_close(model_probs(scope["model"], bench, k), expected, rtol=1e-4, atol=1e-6)


def test_full_weights_from_a_local_base_copy(env, tmp_path):
    """A base known by a hub name that is not on this machine, read from a local folder (--base-path)."""
    bench, store, runs, _ = env
    local = dataclasses.replace(bench, base_name="org/not-downloaded-here")
    run = load_run(runs["ties"], store, bench.adapters)
    res = export_run(local, run, tmp_path / "full", ExportParams(mode="full", head="beta"))
    assert res.card["base_model"] == "org/not-downloaded-here"
    model = AutoModelForSequenceClassification.from_pretrained(res.path).eval()
    k = bench.tasks.names.index("beta")
    expected = bench.predict(MergedSource(run.merge), "calibration")[k]
    torch.testing.assert_close(model_probs(model, bench, k), expected, rtol=1e-4, atol=1e-6)


def test_full_weights_from_a_base_path_the_model_does_not_record(env, tmp_path, monkeypatch):
    bench, store, runs, base_dir = env
    monkeypatch.setattr(bench.model.model.config, "_name_or_path", "org/not-downloaded-here")
    run = load_run(runs["ties"], store, bench.adapters)
    local = dataclasses.replace(bench, base_name=str(base_dir))
    res = export_run(local, run, tmp_path / "full", ExportParams(mode="full", head="beta"))
    model = AutoModelForSequenceClassification.from_pretrained(res.path).eval()
    k = bench.tasks.names.index("beta")
    expected = bench.predict(MergedSource(run.merge), "calibration")[k]
    torch.testing.assert_close(model_probs(model, bench, k), expected, rtol=1e-4, atol=1e-6)


def test_full_model_refuses_heads_the_base_lacks(env):
    bench, store, runs, _ = env
    run = load_run(runs["ties"], store, bench.adapters)
    with pytest.raises(MergecoreError, match=r"^head tensors \['pooler\.nope'\] do not exist in the base model; "
                                             r"check the base model$"):
        full_model(bench, run.merge, "alpha", {"pooler.nope": torch.zeros(2)})


def test_dense_run_refuses_exact(env, tmp_path):
    bench, store, runs, _ = env
    with pytest.raises(MergecoreError, match="dense.*compressed"):
        export_run(bench, load_run(runs["ties"], store, bench.adapters), tmp_path / "out")
    assert not any(tmp_path.iterdir())


def test_existing_target_needs_overwrite_and_failures_leave_nothing(env, tmp_path, monkeypatch):
    bench, store, runs, _ = env
    run = load_run(runs["task"], store, bench.adapters)
    out = tmp_path / "out"
    out.mkdir()
    (out / "junk.txt").write_text("previous")
    with pytest.raises(MergecoreError, match="already exists.*--force"):
        export_run(bench, run, out)
    with pytest.raises(MergecoreError, match="holds files mergecore did not write.*remove it yourself"):
        export_run(bench, run, out, ExportParams(overwrite=True))  # --force replaces only mergecore's folders
    assert [p.name for p in out.iterdir()] == ["junk.txt"]
    (out / MARKER).write_text("")  # as if mergecore had written it
    import mergecore.export.writer as ex

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "save_tensors", boom)
    with pytest.raises(OSError):
        export_run(bench, run, out, ExportParams(overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "junk.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    monkeypatch.undo()
    export_run(bench, run, out, ExportParams(overwrite=True))
    assert not (out / "junk.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(MergecoreError, match="is a file"):
        export_run(bench, run, tmp_path / "file", ExportParams(overwrite=True))


def test_run_folder_round_trip_and_corrupt_folder(env, tmp_path):
    from mergecore.runs.folder import write_run_folder

    bench, store, runs, _ = env
    write_run_folder(tmp_path / "run", store, runs["layer"])
    from_folder = load_run(tmp_path / "run", None, bench.adapters)
    from_store = load_run(runs["layer"], store, bench.adapters)
    for name, m in from_store.merge.items():
        torch.testing.assert_close(from_folder.merge[name].B, m.B)
    data = (tmp_path / "run" / "coefs.safetensors").read_bytes()
    (tmp_path / "run" / "coefs.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MergecoreError, match="corrupt or truncated"):
        load_run(tmp_path / "run", None, bench.adapters)
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(MergecoreError, match="run.json is missing or corrupt"):
        load_run(tmp_path / "run", None, bench.adapters)


def test_run_folder_store_answers_its_run_from_the_folder_and_the_rest_from_the_store(env, tmp_path):
    """`--run <folder>` (analyze): the folder's run is read from the folder, every other call goes to the
    workspace store; compared with the store that wrote the folder."""
    from mergecore.runs.folder import RunFolderStore, open_run, write_run_folder

    _, store, runs, _ = env
    rid, other = runs["layer"], runs["task"]
    write_run_folder(tmp_path / "run", store, other)
    write_run_folder(tmp_path / "run", store, rid, force=True)  # an existing run folder is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (tmp_path / "run" / "run.json").read_text().startswith('{\n  "id": ')  # indented for people
    wrapped, got = open_run(str(tmp_path / "run"), store)
    assert isinstance(wrapped, RunFolderStore) and got.id == rid and wrapped.store is store and got is wrapped.record
    assert open_run(other, store) == (store, store.get(other))
    want = store.get(rid)
    assert dataclasses.replace(wrapped.get(rid), message=want.message, created=want.created,
                               updated=want.updated) == want
    assert (wrapped.get(rid).message, wrapped.get(rid).created, wrapped.get(rid).updated) == ("", 0.0, 0.0)
    assert wrapped.get(other) == store.get(other)
    assert open_run(str(tmp_path / "run"), None)[1].config == want.config
    with pytest.raises(MergecoreError, match=r"^no-such-run is neither a run folder nor a run id with a workspace; "
                                             r"pass --workspace$"):
        open_run("no-such-run", None)
    (tmp_path / "odd").mkdir()
    for text in ("{not json", json.dumps({"id": "x"}), json.dumps({"config": [1, 2]}), json.dumps([1])):
        (tmp_path / "odd" / "run.json").write_text(text)
        with pytest.raises(MergecoreError, match="run.json is missing or corrupt"):  # named once, when opened
            open_run(str(tmp_path / "odd"), store)
    # the folder's run: artifacts, blobs, tensors and events as the store has them
    assert wrapped.artifacts(rid) == sorted(store.artifacts(rid)) == ["coefs"]
    assert wrapped.get_blob(rid, "coefs") == store.get_blob(rid, "coefs")
    assert {k: v.tolist() for k, v in wrapped.get_tensors(rid, "coefs").items()} == \
        {k: v.tolist() for k, v in store.get_tensors(rid, "coefs").items()}
    assert wrapped.events(rid) == store.events(rid) and len(store.events(rid)) > 1
    kinds = {e["kind"] for e in store.events(rid)}
    for kind in kinds:
        assert wrapped.events(rid, kind) == store.events(rid, kind)
    # what the folder holds wins over the store's record of the same id
    from safetensors.torch import save_file

    save_file({"gains": torch.ones(2)}, str(tmp_path / "run" / "gains.safetensors"))
    assert wrapped.artifacts(rid) == ["coefs", "gains"] and torch.equal(wrapped.get_tensors(rid, "gains")["gains"],
                                                                        torch.ones(2))
    with pytest.raises(MergecoreError, match=r"has no artifact 'gains'"):
        store.get_blob(rid, "gains")
    assert sorted(store.artifacts(runs["tsv_m"])) == ["merged"] == wrapped.artifacts(runs["tsv_m"])
    with pytest.raises(MergecoreError, match=rf"^run {runs['tsv_m']} has no artifact 'coefs'"):
        wrapped.get_tensors(runs["tsv_m"], "coefs")
    # a run that did not finish keeps its status through the folder
    failed = store.create("broken", "static", {"method": "ties"})
    store.finish(failed, "failed", {}, "boom")
    write_run_folder(tmp_path / "failed", store, failed)
    assert RunFolderStore(tmp_path / "failed", store).record.status == "failed" == store.get(failed).status
    with pytest.raises(MergecoreError, match=rf"^run folder {re.escape(str(tmp_path / 'run'))} has no "
                                             r"merged\.safetensors; write the run folder again$"):
        wrapped.get_blob(rid, "merged")
    # any other run: the store's answers
    assert wrapped.artifacts(other) == store.artifacts(other)
    assert wrapped.get_blob(other, "coefs") == store.get_blob(other, "coefs")
    assert torch.equal(wrapped.get_tensors(other, "coefs")["coefs"], store.get_tensors(other, "coefs")["coefs"])
    assert wrapped.events(other) == store.events(other) and wrapped.events(other, "step") == store.events(other, "step")
    assert wrapped.events_since(other, 0) == store.events_since(other, 0)  # everything else: the store
    # list: the store's runs with the folder's record in place of the store's record of the same id
    assert [r.id for r in wrapped.list()] == [r.id for r in store.list() if r.id != rid] + [rid]
    assert wrapped.list()[-1] is wrapped.record
    assert [r.id for r in wrapped.list("static")] == [r.id for r in store.list("static")]
    assert [r.id for r in wrapped.list("learned")] == [r.id for r in store.list("learned") if r.id != rid] + [rid]
    # analyses of the folder's run are not cached (its id may name another run), the others are
    wrapped.cache_put(f"lens:{rid}:x", b"mine")
    assert store.cache_get(f"lens:{rid}:x") is None
    store.cache_put(f"lens:{rid}:y", b"store")
    assert wrapped.cache_get(f"lens:{rid}:y") is None
    wrapped.cache_put(f"lens:{other}:x", b"theirs")
    assert store.cache_get(f"lens:{other}:x") == b"theirs" == wrapped.cache_get(f"lens:{other}:x")
    # a folder without events.jsonl has none; name / kind / status / result defaults
    (tmp_path / "run" / "events.jsonl").unlink()
    assert wrapped.events(rid) == []
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "run.json").write_text(json.dumps({"id": 7, "config": {"a": 1}}))
    bare = RunFolderStore(tmp_path / "bare", store).record
    assert (bare.id, bare.name, bare.kind, bare.status, bare.config, bare.result) == ("7", "7", "", "done", {"a": 1}, {})
    for text, exc in (("{not json", "JSONDecodeError"), (json.dumps({"id": "x"}), "KeyError"),
                      (json.dumps([1]), "TypeError"), (json.dumps({"id": "x", "config": 3}), "TypeError"),
                      (json.dumps({"id": "x", "config": [1]}), "TypeError"),
                      (json.dumps({"id": "x", "config": ["abc"]}), "ValueError")):
        (tmp_path / "bare" / "run.json").write_text(text)
        with pytest.raises(MergecoreError, match=rf"^{re.escape(str(tmp_path / 'bare' / 'run.json'))} is missing or "
                                                 rf"corrupt \({exc}\); write the run folder again with `learn --out` "
                                                 r"/ `merge --out`$"):
            RunFolderStore(tmp_path / "bare", store)
    (tmp_path / "bare" / "run.json").write_bytes(b"\xff\xfe")
    with pytest.raises(MergecoreError, match=r"is missing or corrupt \(UnicodeDecodeError\)"):
        RunFolderStore(tmp_path / "bare", store)
    (tmp_path / "bare" / "run.json").unlink()
    with pytest.raises(MergecoreError, match=r"is missing or corrupt \(FileNotFoundError\)"):
        RunFolderStore(tmp_path / "bare", store)


def test_other_adapters_and_unknown_head_are_refused(env, tmp_path):
    bench, store, runs, _ = env
    run = load_run(runs["task"], store, bench.adapters)
    with pytest.raises(MergecoreError, match="unknown head task"):
        export_run(bench, run, tmp_path / "a", ExportParams(head="../evil"))
    bad = {**run.config, "adapters": [{**a, "sha256": "0" * 64} for a in run.config["adapters"]]}
    with pytest.raises(MergecoreError, match=rf"^run {re.escape(run.id)} was made from adapters \['alpha', 'beta', "
                                             r"'gamma'\] with other contents than the loaded"):
        export_run(bench, type(run)(run.id, run.name, run.kind, bad, run.result, run.merge), tmp_path / "b")
    assert not any(tmp_path.iterdir())
    other = AdapterSet(tuple(dataclasses.replace(a, sha256="1" * 64) for a in bench.adapters.adapters))
    with pytest.raises(MergecoreError, match=rf"^run {re.escape(run.id)} was made from adapters .* load the run's "
                                             r"adapters \(same folders\) before exporting$"):
        load_run(runs["task"], store, other)


def test_file_names_cannot_escape(tmp_path):
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    for name in ("..", ".", "", "/", "a/b", "..\\x", ".hidden"):
        s = safe_name(name)
        assert "/" not in s and "\\" not in s and not s.startswith(".") and s
    with pytest.raises(MergecoreError, match="escapes"):
        inside(tmp_path, "../x")
    assert inside(tmp_path, "heads/a.safetensors").parent == (tmp_path / "heads").resolve()


def test_write_text_atomic_replaces_whole_files_or_nothing(tmp_path, monkeypatch):
    from pathlib import Path

    from mergecore.files import write_text_atomic

    target = tmp_path / "a" / "b" / "mapping.json"
    write_text_atomic(target, "first ü\n")  # missing parents are made
    assert target.read_bytes() == "first ü\n".encode() and sorted(p.name for p in target.parent.iterdir()) == [
        "mapping.json"]
    write_text_atomic(str(target), "second")
    assert target.read_text(encoding="utf-8") == "second" and [p.name for p in target.parent.iterdir()] == ["mapping.json"]

    def fail(self, other):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "third")
    assert target.read_text(encoding="utf-8") == "second" and [p.name for p in target.parent.iterdir()] == ["mapping.json"]


def test_zip_holds_the_folder(env, tmp_path):
    import io
    import zipfile

    bench, store, runs, _ = env
    res = export_run(bench, load_run(runs["task"], store, bench.adapters), tmp_path / "merged")
    names = zipfile.ZipFile(io.BytesIO(zip_folder(res.path))).namelist()
    assert sorted(names) == sorted(f"merged/{f}" for f in res.files)


def test_cli_export_force_and_exit_codes(env, tmp_path, monkeypatch, capsys):
    import mergecore.cli.export as cx
    from mergecore.cli import main

    bench, store, runs, _ = env
    monkeypatch.setattr("mergecore.forward.spec.RunSpec.open", lambda self: bench)
    monkeypatch.setattr(cx, "open_inputs", lambda spec: bench)  # exact mode: a workbench serves as ExportInputs

    def run(*argv) -> int:
        with pytest.raises(SystemExit) as exc:
            main(["export", "--run", runs["tsv_m"], "--workspace", str(store.workspace), "--out", str(tmp_path / "o"),
                  *argv])
        return exc.value.code

    assert run("--rank", "2", "--samples", "4", "--json") == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["export"]["mode"] == "compressed" and 0 < printed["export"]["energy"]["overall"] <= 1
    assert run() == 2 and "already exists" in capsys.readouterr().err
    assert run("--force", "--head", "gamma") == 0
    assert json.loads((tmp_path / "o" / "merge_card.json").read_text())["export"]["head"] == "gamma"
    assert run("--force", "--rank", "2", "--full-weights") == 2
    assert run("--force", "--rank", "0") == 2


def test_cli_exact_export_never_loads_the_base(env, tmp_path, monkeypatch):
    """`export` in exact mode reads the adapters, the tasks and the run, never the base model, and writes the
    same adapter as an export from the open workbench."""
    import mergecore.bases
    import mergecore.forward.spec as spec
    import mergecore.forward.workbench as wb
    from mergecore.cli import main

    bench, store, runs, _ = env

    def no_base(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(wb, "load_base", no_base)
    monkeypatch.setattr(mergecore.bases, "load_base", no_base)
    monkeypatch.setattr(spec, "load_tasks", lambda names, source: bench.tasks)  # the tiny tasks are not demo tasks
    with pytest.raises(SystemExit) as exc:
        main(["export", "--run", runs["task"], "--workspace", str(store.workspace), "--out", str(tmp_path / "cli")])
    assert exc.value.code == 0
    export_run(bench, load_run(runs["task"], store, bench.adapters), tmp_path / "api")
    cli, api = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("cli", "api"))
    assert cli.keys() == api.keys() and all(torch.equal(cli[k], api[k]) for k in cli)
    configs = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("cli", "api")]
    assert configs[0] == configs[1]

