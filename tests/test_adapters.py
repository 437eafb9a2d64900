"""AdapterSet bookkeeping against the adapters' own files: the compatibility report and subsets."""

from __future__ import annotations

import hashlib
import json

import pytest
from safetensors.torch import load_file

from mergecore.adapters import load_adapters
from mergecore.errors import MergecoreError


def test_report_rows_come_from_each_adapter_folder(tiny_setup):
    _, dirs = tiny_setup
    rows = load_adapters(dirs).report()
    assert [r["adapter"] for r in rows] == [d.name for d in dirs]
    for row, d in zip(rows, dirs):
        config = json.loads((d / "adapter_config.json").read_text())
        sha = hashlib.sha256((d / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert row["ranks"] == [config["r"]] and row["sha256"] == sha[:12] and row["source"] == str(d)
        assert row["target_modules"] == sorted(config["target_modules"]) and row["heads"] == ["classifier"]
        assert row["base_model"] == config["base_model_name_or_path"]
        saved = load_file(d / "adapter_model.safetensors")
        assert row["modules"] == sum(1 for k in saved if k.endswith("lora_A.weight"))


def test_subset_keeps_the_asked_order_and_refuses_unknown_names(tiny_setup):
    _, dirs = tiny_setup
    adapters = load_adapters(dirs)
    sub = adapters.subset([dirs[2].name, dirs[0].name])
    assert sub.names == [dirs[2].name, dirs[0].name]
    assert sub.adapters[0] is adapters.adapters[2] and sub.adapters[1] is adapters.adapters[0]
    with pytest.raises(MergecoreError, match="unknown adapters \\['nope'\\]; known: alpha, beta, gamma"):
        adapters.subset(["nope"])


# ----------------------------------------------------------------------------- loading, synthetic folders

import math  # noqa: E402
import shutil  # noqa: E402
import re  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from mergecore import adapters as adapters_mod  # noqa: E402
from mergecore.adapters import AdapterSet, LoraFactors, load_adapter, natural_key  # noqa: E402

P = "base_model.model."


def _ab(r=2, out=3, inp=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, inp, generator=g, dtype=torch.float64), torch.randn(out, r, generator=g, dtype=torch.float64)


def write_adapter(folder, tensors: dict, **config):
    """An adapter folder holding ``tensors`` (safetensors) and a LoRA config (r=2, alpha=4 unless given)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": "tiny/base", **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        save_file({k: v.clone().contiguous() for k, v in tensors.items()}, folder / "adapter_model.safetensors")
    return folder


def lora(module, A, B, prefix=P):
    return {f"{prefix}{module}.lora_A.weight": A, f"{prefix}{module}.lora_B.weight": B}


def exact(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_loaded_factors_scale_and_hash_come_from_the_files(tmp_path):
    A, B = _ab(r=2, out=3, inp=4)
    A2, B2 = _ab(r=3, out=5, inp=4, seed=1)
    tensors = {**lora("layer.10.q", A, B), **lora("layer.9.fc", A2, B2, prefix=""),
               "base_model.model.score.weight": torch.ones(2, 4, dtype=torch.float64)}
    d = write_adapter(tmp_path / "ad", tensors, r=2, lora_alpha=6, rank_pattern={"fc": 3}, alpha_pattern={"fc": 1.5},
                      modules_to_save=["score"], target_modules=["q", "fc"])
    a = load_adapter(d)
    assert a.name == "ad" and a.source == str(d) and a.base_model == "tiny/base"
    assert a.sha256 == hashlib.sha256((d / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert set(a.factors) == {"layer.10.q", "layer.9.fc"} and a.ranks == {"layer.10.q": 2, "layer.9.fc": 3}
    f, g = a.factors["layer.10.q"], a.factors["layer.9.fc"]
    assert f.A.dtype == torch.float32 and f.B.dtype == torch.float32 and f.A.is_contiguous()
    assert torch.equal(f.A, A.float()) and torch.equal(f.B, B.float()) and f.scale == 6 / 2 and f.rank == 2
    assert torch.equal(g.A, A2.float()) and g.scale == 1.5 / 3 and g.rank == 3
    assert torch.allclose(f.delta(), 3.0 * (B.float().double() @ A.float().double()), rtol=0, atol=1e-12)
    assert f.delta().dtype == torch.float64
    assert set(a.extra) == {"score.weight"} and a.extra["score.weight"].dtype == torch.float32
    assert a.head_modules == ["score"]
    rs = load_adapter(write_adapter(tmp_path / "rs", lora("q", A, B), r=2, lora_alpha=6, use_rslora=True), name="x")
    assert rs.name == "x" and rs.factors["q"].scale == 6 / math.sqrt(2)


def test_head_modules_fall_back_to_the_tensor_owner(tmp_path):
    A, B = _ab()
    d = write_adapter(tmp_path / "h", {**lora("q", A, B), P + "pooler.dense.weight": torch.ones(3, 3),
                                       P + "classifier.out.bias": torch.ones(3)}, modules_to_save=["pooler", "out"])
    assert load_adapter(d).head_modules == ["classifier.out", "pooler"]
    a = adapters_mod.Adapter("n", "s", {"modules_to_save": None}, {}, {"x.y.weight": torch.ones(1)})
    assert a.head_modules == ["x.y"] and a.base_model == ""
    assert adapters_mod.Adapter("n", "s", {"base_model_name_or_path": None}, {}).base_model == ""


def test_natural_key_orders_layer_numbers_numerically():
    names = ["layer.10.q", "layer.9.q", "layer.2.v", "layer.2.q", "a"]
    assert sorted(names, key=natural_key) == ["a", "layer.2.q", "layer.2.v", "layer.9.q", "layer.10.q"]
    assert natural_key("layer.10.q") == ["layer.", 10, ".q"]


def test_adapter_set_bookkeeping(tmp_path):
    A, B = _ab(r=2, out=3, inp=4)
    A5, B5 = _ab(r=1, out=5, inp=6, seed=2)
    d1 = write_adapter(tmp_path / "one", {**lora("layer.10.q", A, B), **lora("layer.2.q", A, B)})
    d2 = write_adapter(tmp_path / "two", {**lora("layer.2.q", A, B), **lora("layer.3.fc", A5, B5)}, r=1,
                       rank_pattern={"layer.2.q": 2}, target_modules="layer.*")
    s = adapters_mod.load_adapters([d1, d2])
    assert len(s) == 2 and s.names == ["one", "two"] and s.base_model == "tiny/base"
    assert s.modules == ["layer.2.q", "layer.3.fc", "layer.10.q"]
    assert s.shape("layer.3.fc") == (5, 6) and s.shape("layer.10.q") == (3, 4)
    f = s.factors("layer.3.fc")
    assert f[0] is None and f[1] is s.adapters[1].factors["layer.3.fc"]
    with pytest.raises(MergecoreError, match=exact("no adapter targets module 'nope'; pick one of the adapters' modules")):
        s.shape("nope")
    rows = s.report()
    assert rows[1]["target_modules"] == ["layer.*"] and rows[0]["target_modules"] == []
    assert rows[1]["ranks"] == [1, 2] and rows[1]["modules"] == 2 and rows[1]["heads"] == []
    with pytest.raises(MergecoreError, match=exact("unknown adapters ['x', 'y']; known: one, two")):
        s.subset(["one", "x", "y"])
    over = adapters_mod.load_adapters([d1, d2], base_model="other/base")
    assert over.base_model == "other/base" and [a.base_model for a in over.adapters] == ["other/base"] * 2
    assert over.adapters[0].factors is not None and over.adapters[1].sha256 == s.adapters[1].sha256
    assert over.adapters[1].config["r"] == 1 and over.adapters[1].source == str(d2)


def test_adapter_set_refusals_exact(tmp_path):
    A, B = _ab(r=2, out=3, inp=4)
    with pytest.raises(MergecoreError, match=exact("no adapters given; pass at least one PEFT LoRA adapter folder")):
        AdapterSet(())
    d1 = write_adapter(tmp_path / "one", lora("q", A, B))
    one = load_adapter(d1)
    with pytest.raises(MergecoreError, match=exact("duplicate adapter names ['one', 'one']; "
                                                   "give each adapter folder a distinct name")):
        AdapterSet((one, one))
    d2 = write_adapter(tmp_path / "two", lora("q", A, B), base_model_name_or_path=None)
    with pytest.raises(MergecoreError, match=exact("adapters were trained on different base models (one: tiny/base, "
                                                   "two: (none)); merge only adapters of one base")):
        adapters_mod.load_adapters([d1, d2])
    A3, B3 = _ab(r=2, out=3, inp=5)
    d3 = write_adapter(tmp_path / "three", {**lora("k", A3, B3), **lora("q", A3, B3)})
    with pytest.raises(MergecoreError, match=exact("shape mismatch on module q: three has (3, 5), one has (3, 4); "
                                                   "the adapters do not belong to the same base model")):
        adapters_mod.load_adapters([d1, shutil.copytree(d1, tmp_path / "four"), d3])
    d5 = write_adapter(tmp_path / "five", lora("q", A, _ab(r=2, out=6, inp=4)[1]))
    with pytest.raises(MergecoreError, match=r"^shape mismatch on module q: five has \(6, 4\), three has \(3, 5\);"):
        adapters_mod.load_adapters([d3, d5])


def test_folder_refusals_exact(tmp_path, monkeypatch):
    A, B = _ab()
    d = write_adapter(tmp_path / "a", lora("q", A, B))
    f = d / "adapter_config.json"
    with pytest.raises(MergecoreError, match=exact(f"{f} is a file; pass the adapter folder that holds "
                                                   "adapter_config.json")):
        load_adapter(f)
    missing = tmp_path / "nope"
    with pytest.raises(MergecoreError, match=exact(f"adapter folder {missing} does not exist; pass a PEFT adapter "
                                                   "folder or a hub id")):
        load_adapter(missing)
    with pytest.raises(MergecoreError, match=exact("adapter folder no/such/id does not exist; pass a PEFT adapter "
                                                   "folder or a hub id")):
        load_adapter("no/such/id")  # not a hub id: two slashes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MergecoreError, match=r"^could not fetch adapter 'nobody/no-such_adapter\.1' from the hub "
                                             r"\(\w+\); check the id and network, or download it and pass the local "
                                             r"folder$"):
        load_adapter("nobody/no-such_adapter.1")
    import huggingface_hub

    def refuse(repo_id, **kw):
        raise ConnectionRefusedError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(MergecoreError, match=exact("could not fetch adapter 'a/b' from the hub (ConnectionRefusedError); "
                                                   "check the id and network, or download it and pass the local "
                                                   "folder")):
        load_adapter("a/b")


def test_hub_id_downloads_and_is_named_after_the_repo(tmp_path, monkeypatch):
    A, B = _ab()
    d = write_adapter(tmp_path / "snapshot-abc", lora("q", A, B))
    asked = []
    monkeypatch.setattr(adapters_mod, "_download", lambda rid: asked.append(rid) or d)
    a = load_adapter("someone/my-adapter")
    assert asked == ["someone/my-adapter"] and a.name == "my-adapter" and a.source == "someone/my-adapter"
    assert torch.equal(a.factors["q"].A, A.float())


def test_download_asks_only_for_the_config_and_safetensors(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda rid, **kw: calls.append((rid, kw)) or str(tmp_path))
    assert adapters_mod._download("a/b") == tmp_path
    assert calls == [("a/b", {"allow_patterns": ["adapter_config.json", "adapter_model.safetensors"]})]


def test_config_refusals_exact(tmp_path):
    A, B = _ab()
    d = write_adapter(tmp_path / "a", lora("q", A, B))
    f = d / "adapter_config.json"
    f.unlink()
    with pytest.raises(MergecoreError, match=exact(f"{f} is missing; a PEFT adapter folder needs adapter_config.json")):
        load_adapter(d)
    f.write_text('{"peft_type": ')
    with pytest.raises(json.JSONDecodeError) as why:
        json.loads(f.read_text())
    with pytest.raises(MergecoreError, match=exact(f"{f} is not valid JSON ({why.value}); re-save the adapter with PEFT")):
        load_adapter(d)
    f.write_text("[1]")
    with pytest.raises(MergecoreError, match=exact(f"{f} must hold a JSON object; re-save the adapter with PEFT")):
        load_adapter(d)
    for ptype, shown in (("ia3", "IA3"), ("", "missing")):
        f.write_text(json.dumps({"peft_type": ptype, "r": 2}))
        with pytest.raises(MergecoreError, match=exact(f"{f}: peft_type is {shown}; only LORA adapters can be merged, "
                                                       "pass a LoRA adapter")):
            load_adapter(d)
    f.write_text(json.dumps({"r": 2}))
    with pytest.raises(MergecoreError, match=exact(f"{f}: peft_type is missing; only LORA")[:-1]):
        load_adapter(d)
    f.write_text(json.dumps({"peft_type": "lora", "r": 2, "lora_alpha": 4}))
    assert load_adapter(d).factors["q"].scale == 2.0
    f.write_text(json.dumps({"peft_type": "LORA", "r": 2, "use_dora": True}))
    with pytest.raises(MergecoreError, match=exact(f"{f}: use_dora is set (DoRA rescales the weight's column norms); "
                                                   "mergecore merges plain LoRA only, retrain without use_dora")):
        load_adapter(d)


def test_weights_refusals_exact(tmp_path):
    A, B = _ab()
    d = write_adapter(tmp_path / "a", lora("q", A, B))
    st, binf = d / "adapter_model.safetensors", d / "adapter_model.bin"
    data = st.read_bytes()
    st.write_bytes(data[:20])
    with pytest.raises(MergecoreError, match=exact(f"{st} is corrupt or truncated (SafetensorError); re-export the "
                                                   "adapter")):
        load_adapter(d)
    st.unlink()
    with pytest.raises(MergecoreError, match=exact(f"{st} is missing; a PEFT adapter folder needs "
                                                   "adapter_model.safetensors")):
        load_adapter(d, allow_bin=True)
    torch.save({k: v.float() for k, v in lora("q", A, B).items()}, binf)
    with pytest.raises(MergecoreError, match=exact(f"{binf} is a pickle; convert it to adapter_model.safetensors or "
                                                   "opt in with --allow-bin")):
        load_adapter(d)
    with pytest.raises(MergecoreError, match=exact(f"{binf} is a pickle; convert it to adapter_model.safetensors or "
                                                   "opt in with --allow-bin")):
        adapters_mod.load_adapters([d])  # the set loader refuses pickles by default too
    a = load_adapter(d, allow_bin=True)
    assert torch.equal(a.factors["q"].A, A.float()) and a.sha256 == hashlib.sha256(binf.read_bytes()).hexdigest()
    assert a.factors["q"].scale == 2.0
    torch.save([torch.zeros(1)], binf)
    with pytest.raises(MergecoreError, match=exact(f"{binf} is not a state dict of tensors; re-export the adapter "
                                                   "with PEFT")):
        load_adapter(d, allow_bin=True)
    torch.save({"x": torch.zeros(1), "y": [1]}, binf)
    with pytest.raises(MergecoreError, match=exact(f"{binf} is not a state dict of tensors; re-export")[:-1]):
        load_adapter(d, allow_bin=True)
    binf.write_bytes(b"not a pickle")
    with pytest.raises(Exception) as raised:  # what torch itself raises on these bytes
        torch.load(binf, map_location="cpu", weights_only=True)
    with pytest.raises(MergecoreError, match=exact(f"{binf} could not be read safely ({raised.type.__name__}); "
                                                   "re-export it")):
        load_adapter(d, allow_bin=True)


def test_base_model_override_keeps_factors_and_heads(tmp_path):
    A, B = _ab(r=2, out=3, inp=4)
    head = torch.arange(6.0).reshape(2, 3)
    d = write_adapter(tmp_path / "a", {**lora("q", A, B), P + "classifier.weight": head}, modules_to_save=["classifier"])
    (a,) = adapters_mod.load_adapters([d], base_model="local/copy").adapters
    assert a.base_model == "local/copy" and a.config["modules_to_save"] == ["classifier"]
    assert torch.equal(a.extra["classifier.weight"], head) and list(a.extra) == ["classifier.weight"]
    assert torch.equal(a.factors["q"].A, A.float()) and a.sha256 == load_adapter(d).sha256
    assert load_adapter(f"{d}/").name == "a" == load_adapter(d).name  # a local folder is named after itself


def test_tensor_refusals_exact(tmp_path):
    A, B = _ab(r=2, out=3, inp=4)
    st = tmp_path / "a" / "adapter_model.safetensors"
    cf = tmp_path / "a" / "adapter_config.json"

    def refused(tensors, message, **config):
        d = write_adapter(tmp_path / "a", tensors, **config)
        with pytest.raises(MergecoreError, match=exact(message)):
            load_adapter(d)

    refused({P + "q.weight": A}, f"{st}: q.weight is neither a lora_A/lora_B factor nor under modules_to_save None; "
                                 "re-save a plain LoRA adapter with PEFT")
    refused({P + "x.weight": A, P + "q.lora_A.weight": A},
            f"{st}: x.weight is neither a lora_A/lora_B factor nor under modules_to_save ['q']; re-save a plain LoRA "
            "adapter with PEFT", modules_to_save=["q"])
    # the LoRA-side stray is named first, then trainable tokens, then the name order
    refused({**lora("q", A, B), P + "a.weight": A, P + "q.lora_magnitude_vector": A[0]},
            f"{st}: q.lora_magnitude_vector is a DoRA magnitude (use_dora); merge plain LoRA adapters")
    refused({**lora("q", A, B), P + "a.weight": A, P + "z.trainable_tokens_delta": A},
            f"{st}: z.trainable_tokens_delta holds trainable tokens (trainable_token_indices); retrain without them")
    # a LoRA-side tensor inside a saved head module is still refused, not taken as a head parameter
    refused({**lora("q", A, B), P + "classifier.weight": A, P + "classifier.lora_B.bias": A[0]},
            f"{st}: classifier.lora_B.bias is a bias of lora_B (lora_bias=True); retrain with lora_bias=False",
            modules_to_save=["classifier"])
    refused({**lora("q", A, B), P + "b.weight": A, P + "a.weight": A},
            f"{st}: a.weight is neither a lora_A/lora_B factor nor under modules_to_save None; re-save a plain LoRA "
            "adapter with PEFT")
    refused({P + "head.weight": A}, f"{st} holds no lora_A/lora_B weights; pass a PEFT LoRA adapter folder",
            modules_to_save=["head"])
    refused({**lora("q", A, B), P + "lm_head.weight": A},
            f"{st}: modules_to_save ['lm_head'] saved whole modules of a CAUSAL_LM model; mergecore merges their LoRA "
            "factors only, retrain without modules_to_save", modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    refused({**lora("q", A, B), P + "lm_head.weight": A},
            f"{st}: modules_to_save ['lm_head'] saved whole modules of a seq_2_seq_lm model; mergecore merges their "
            "LoRA factors only, retrain without modules_to_save", modules_to_save=["lm_head"], task_type="seq_2_seq_lm")
    bad = A.clone()
    bad[0, 0] = float("inf")
    refused({**lora("q", A, B), P + "head.weight": bad},
            f"{st}: head.weight holds NaN or Inf; retrain or re-export the adapter", modules_to_save=["head"])
    refused({P + "q.lora_B.weight": B}, f"{st}: module q has lora_B only; re-export the adapter")
    refused({P + "q.lora_A.weight": A}, f"{st}: module q has lora_A only; re-export the adapter")
    refused(lora("q", A[:, :, None, None], B[:, :, None, None]),
            f"{st}: module q has 4-D factors (a convolution in target_modules); only Linear layers can be merged, "
            "retrain targeting Linear modules only")
    refused(lora("q", A, B[:, :, None]), f"{st}: module q has 2-D factors (a convolution in target_modules); only "
                                         "Linear layers can be merged, retrain targeting Linear modules only")
    refused(lora("q", A[:0], B), f"{st}: module q has rank 0; drop this module or retrain with r >= 1")
    refused(lora("q", A, B[:, :0]), f"{st}: module q has rank 0; drop this module or retrain with r >= 1")
    refused(lora("q", A[:1], B), f"{st}: module q: lora_A has rank 1 but lora_B 2; the file is inconsistent, "
                                 "re-export the adapter")
    for poisoned in ("A", "B"):
        t = {"A": A.clone(), "B": B.clone()}
        t[poisoned][-1, -1] = float("nan")
        refused(lora("q", t["A"], t["B"]), f"{st}: module q holds NaN or Inf weights; retrain or re-export the adapter")
    refused(lora("q", A, B), f"{st}: module q has rank 2 but adapter_config.json gives r=3 (r / rank_pattern), so PEFT "
                             "would not load it either; re-save the adapter with PEFT", r=3)
    refused(lora("layer.q", A, B), f"{cf}: r is 'x', not a finite number; fix it or re-save the adapter with PEFT",
            rank_pattern={"q": "x"})


def test_lora_keys_with_an_adapter_name_and_seq_cls_heads_load(tmp_path):
    A, B = _ab(r=2, out=3, inp=4)
    tensors = {P + "q.lora_A.default.weight": A, P + "q.lora_B.default.weight": B, "classifier.weight": A}
    d = write_adapter(tmp_path / "a", tensors, modules_to_save=["classifier"], task_type="SEQ_CLS")
    a = load_adapter(d)
    assert set(a.factors) == {"q"} and set(a.extra) == {"classifier.weight"}
    assert torch.equal(a.extra["classifier.weight"], A.float())


def test_loraf_factors_delta_is_scaled_product():
    A, B = _ab(r=3, out=2, inp=5)
    f = LoraFactors(A=A.float(), B=B.float(), scale=0.5)
    assert f.rank == 3
    ref = 0.5 * torch.einsum("or,ri->oi", B.float().double(), A.float().double())
    assert torch.allclose(f.delta(), ref, rtol=0, atol=1e-13)


def test_language_model_adapters_without_saved_modules_load(tmp_path):
    A, B = _ab()
    for task in ("CAUSAL_LM", "SEQ_2_SEQ_LM", None):
        d = write_adapter(tmp_path / f"lm-{task}", lora("q", A, B), task_type=task)
        a = load_adapter(d)
        assert set(a.factors) == {"q"} and a.extra == {}
