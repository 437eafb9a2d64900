"""The merged update as data, against dense recomputations."""

from __future__ import annotations

import torch

from mergecore.adapters import load_adapters
from mergecore.merged import coefs_to_merge, merge_to_tensors, tensors_to_merge


def test_coefs_to_merge_equals_the_dense_weighted_sum(tiny_setup):
    """Per module l: B @ A == sum_k c_lk s_k B_k A_k, for per-module coefficients of both signs."""
    _, dirs = tiny_setup
    adapters = load_adapters(dirs)
    coefs = torch.randn(len(adapters.modules), len(adapters), generator=torch.Generator().manual_seed(3)) * 2
    merge = coefs_to_merge(adapters, coefs)
    assert list(merge) == adapters.modules
    assert all(m.B.dtype == m.A.dtype == torch.float32 for m in merge.values())  # stored and exported in float32
    for l, name in enumerate(adapters.modules):
        dense = sum(float(coefs[l, k]) * f.delta() for k, f in enumerate(adapters.factors(name)) if f is not None)
        got = merge[name].delta()
        assert float((got - dense).abs().max()) <= 1e-5 * float(dense.abs().max())


def test_tensor_round_trip_keeps_every_module(tiny_setup):
    _, dirs = tiny_setup
    adapters = load_adapters(dirs)
    merge = coefs_to_merge(adapters, torch.full((len(adapters.modules), len(adapters)), 0.5))
    back = tensors_to_merge(merge_to_tensors(merge))
    assert list(back) == list(merge)
    for name, m in merge.items():
        assert torch.equal(back[name].B, m.B) and torch.equal(back[name].A, m.A)


def _synthetic_adapters():
    """Two LoRA adapters on BERT module names, in memory (ranks 2 and 3; the second skips one module)."""
    from mergecore.adapters import Adapter, AdapterSet, LoraFactors

    g = torch.Generator().manual_seed(6)
    shapes = {"bert.encoder.layer.0.attention.self.query": (8, 6), "bert.encoder.layer.0.output.dense": (6, 10)}

    def factors(r, scale, names):
        return {m: LoraFactors(A=torch.randn(r, shapes[m][1], generator=g), B=torch.randn(shapes[m][0], r, generator=g),
                               scale=scale) for m in names}

    cfg = {"base_model_name_or_path": "tiny-bert"}
    return AdapterSet((Adapter("a", "a", cfg, factors(2, 2.0, list(shapes))),
                       Adapter("b", "b", cfg, factors(3, 0.5, list(shapes)[:1]))))


def _store_with_run(tmp_path, artifacts: dict, status: str = "done"):
    from mergecore.runs.store import RunStore

    store = RunStore(tmp_path)
    run_id = store.create("r", "learned", {})
    for name, tensors in artifacts.items():
        store.put_tensors(run_id, name, tensors)
    store.finish(run_id, status)
    return store, run_id


def test_run_merge_folds_stored_coefficients_like_the_dense_weighted_sum(tmp_path):
    from mergecore.runs.folder import run_merge

    adapters = _synthetic_adapters()
    coefs = torch.tensor([[0.7, -0.4], [1.3, 0.9]])  # (L, K)
    store, run_id = _store_with_run(tmp_path, {"coefs": {"coefs": coefs}})
    merge = run_merge(store, run_id, adapters)
    assert list(merge) == adapters.modules
    for l, name in enumerate(adapters.modules):
        dense = sum(float(coefs[l, k]) * f.delta() for k, f in enumerate(adapters.factors(name)) if f is not None)
        assert float((merge[name].delta() - dense).abs().max()) <= 1e-5 * float(dense.abs().max())


def test_run_merge_prefers_the_stored_merged_update(tmp_path):
    from mergecore.runs.folder import run_merge

    adapters = _synthetic_adapters()
    stored = coefs_to_merge(adapters, torch.full((len(adapters.modules), len(adapters)), 0.3))
    wrong = torch.zeros(len(adapters.modules), len(adapters))
    store, run_id = _store_with_run(tmp_path, {"merged": merge_to_tensors(stored), "coefs": {"coefs": wrong}})
    merge = run_merge(store, run_id, adapters)
    assert sorted(merge) == sorted(stored)  # the store keeps tensors by name, not in model order
    for name, m in stored.items():
        assert torch.equal(merge[name].B, m.B) and torch.equal(merge[name].A, m.A)


def test_run_merge_refuses_coefficients_of_other_adapters_and_runs_without_an_update(tmp_path):
    import pytest

    from mergecore.errors import MergecoreError
    from mergecore.runs.folder import run_merge

    adapters = _synthetic_adapters()
    store, run_id = _store_with_run(tmp_path, {"coefs": {"coefs": torch.zeros(2, 5)}})
    with pytest.raises(MergecoreError) as info:
        run_merge(store, run_id, adapters)
    assert str(info.value) == f"run {run_id} was learned on other adapters ((2, 5) coefficients); load its adapters"
    store, run_id = _store_with_run(tmp_path / "b", {}, status="failed")
    with pytest.raises(MergecoreError) as info:
        run_merge(store, run_id, adapters)
    assert str(info.value) == f"run {run_id} has no merged update (status failed); pick a finished run"

def _mixed_merge():
    """One factored module (LoRA-style B @ A) and one dense module (TIES / DARE style)."""
    from mergecore.merges.base import ModuleMerge

    g = torch.Generator().manual_seed(8)
    return {"enc.0.q": ModuleMerge("lora-factors", B=torch.randn(6, 3, generator=g), A=torch.randn(3, 5, generator=g)),
            "enc.0.v": ModuleMerge("dense", dense=torch.randn(4, 5, generator=g))}


def test_merged_source_applies_factored_and_dense_deltas_to_hidden_states():
    from types import SimpleNamespace

    from mergecore.merged import MergedSource

    merge = _mixed_merge()
    src = MergedSource(merge)
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(9))  # (batch, tokens, in)
    for name, m in merge.items():
        layer = SimpleNamespace(name=name, B_cat=torch.zeros(m.delta().shape[0], 9))
        ref = x.double() @ m.delta().T  # dense recomputation, float64
        assert float((src.lora_term(layer, x) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_merged_source_adds_nothing_on_a_module_the_merge_lacks():
    from types import SimpleNamespace

    from mergecore.merged import MergedSource

    src = MergedSource(_mixed_merge())
    x = torch.randn(2, 3, 5).bfloat16()  # (batch, tokens, in) under mixed precision
    term = src.lora_term(SimpleNamespace(name="enc.1.q", B_cat=torch.zeros(7, 9)), x)  # out 7, R 9
    assert term.shape == (2, 3, 7) and term.dtype == torch.bfloat16 and term.device == x.device
    assert not term.any()


def test_tensor_round_trip_keeps_dense_modules_dense():
    from mergecore.merged import is_dense

    merge = _mixed_merge()
    back = tensors_to_merge(merge_to_tensors(merge))
    assert sorted(back) == sorted(merge)
    assert back["enc.0.v"].space == "dense" and not back["enc.0.v"].is_factored
    assert torch.equal(back["enc.0.v"].dense, merge["enc.0.v"].dense)
    assert back["enc.0.q"].space == "lora-factors" and torch.equal(back["enc.0.q"].B, merge["enc.0.q"].B)
    assert is_dense(back) and not is_dense({"enc.0.q": back["enc.0.q"]})


def test_coefs_to_merge_of_half_precision_adapters_is_float32():
    """Adapters saved in float16 / bfloat16 (common on the hub) still give a float32 merge, equal to the dense sum."""
    from mergecore.adapters import Adapter, AdapterSet

    base = _synthetic_adapters()
    half = AdapterSet(tuple(Adapter(a.name, a.source, a.config, {m: type(f)(A=f.A.to(dt), B=f.B.to(dt), scale=f.scale)
                                                                 for m, f in a.factors.items()})
                            for a, dt in zip(base.adapters, (torch.float16, torch.bfloat16))))
    coefs = torch.tensor([[0.5, 1.5], [-1.0, 2.0]])
    merge = coefs_to_merge(half, coefs)
    for l, name in enumerate(half.modules):
        assert merge[name].B.dtype == merge[name].A.dtype == torch.float32
        dense = sum(float(coefs[l, k]) * f.delta() for k, f in enumerate(half.factors(name)) if f is not None)
        assert float((merge[name].delta() - dense).abs().max()) <= 1e-5 * float(dense.abs().max())


def test_merged_source_keeps_its_deltas_and_zero_terms_on_the_model_device():
    """'meta' stands in for a GPU on CPU-only machines."""
    from types import SimpleNamespace

    from mergecore.merged import MergedSource

    src = MergedSource(_mixed_merge(), device="meta")
    assert all(t.device.type == "meta" for term in src.terms.values() for t in term if t is not None)
    x = torch.empty(2, 3, 5, device="meta")
    assert src.lora_term(SimpleNamespace(name="enc.1.q", B_cat=torch.zeros(7, 9)), x).device.type == "meta"
