"""MergeModel equals a dense recomputation and PEFT's own model with the same adapters."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from mergecore.adapters import load_adapters
from mergecore.forward.coefs import FixedCoefs, RowRouting
from mergecore.forward.readers import ClassifierReader
from mergecore.forward.model import MergeModel

from conftest import texts


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-12))


def _merge_model(base_dir, dirs):
    adapters = load_adapters(dirs)
    base = BertForSequenceClassification.from_pretrained(base_dir)
    return adapters, MergeModel(base, adapters), ClassifierReader(AutoTokenizer.from_pretrained(base_dir))


def _dense_model(base_dir, adapters, coefs: torch.Tensor, task: int):
    """W0 + sum_k c_lk s_k B_k A_k written into a plain model, with task ``task``'s head."""
    model = BertForSequenceClassification.from_pretrained(base_dir, num_labels=adapters.adapters[task].extra["classifier.weight"].shape[0],
                                                          ignore_mismatched_sizes=True)
    with torch.no_grad():
        for l, name in enumerate(adapters.modules):
            lin = model.get_submodule(name)
            delta = sum(coefs[l, k] * f.delta() for k, f in enumerate(adapters.factors(name)) if f is not None)
            lin.weight.copy_((lin.weight.double() + delta).float())
        model.classifier.weight.copy_(adapters.adapters[task].extra["classifier.weight"])
        model.classifier.bias.copy_(adapters.adapters[task].extra["classifier.bias"])
    return model.eval()


def _without_head(src, dst):
    """A copy of an adapter folder with only its LoRA factors (PEFT cannot stack differently sized heads)."""
    import json

    from safetensors.torch import load_file, save_file

    dst.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg.update(modules_to_save=None, task_type=None)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    sd = {k: v for k, v in load_file(src / "adapter_model.safetensors").items() if "lora_" in k}
    save_file(sd, dst / "adapter_model.safetensors")
    return dst


def _batch(reader, n_tasks, n=5):
    parts = [(k, reader.encode([(t,) for t in texts(n, seed=k)]), torch.arange(n)) for k in range(n_tasks)]
    return reader.batch(parts)


def test_layerwise_coefficients_equal_dense_recomputation(tiny_setup):
    base_dir, dirs = tiny_setup
    adapters, mm, reader = _merge_model(base_dir, dirs)
    coefs = torch.randn(len(adapters.modules), len(adapters), generator=torch.Generator().manual_seed(0))
    mm.set_source(FixedCoefs(coefs))
    segments, inputs = _batch(reader, len(adapters))
    logits = reader.label_logits(mm, segments, inputs)
    for k, (t, s, e) in enumerate(segments.spans):
        dense = _dense_model(base_dir, adapters, coefs.double(), k)
        ref = dense(**{key: v[s:e] for key, v in inputs.items()}).logits
        assert _rel(logits[k], ref) <= 1e-5


def test_routing_row_to_k_equals_expert_k(tiny_setup):
    base_dir, dirs = tiny_setup
    adapters, mm, reader = _merge_model(base_dir, dirs)
    segments, inputs = _batch(reader, len(adapters))
    mm.set_source(RowRouting(mm.slot, len(adapters)))
    routed = reader.label_logits(mm, segments, inputs)
    for k, (t, s, e) in enumerate(segments.spans):
        onehot = torch.zeros(len(adapters.modules), len(adapters))
        onehot[:, k] = 1.0
        mm.set_source(FixedCoefs(onehot))
        alone = reader.label_logits(mm, segments, inputs)[k]
        assert _rel(routed[k], alone) <= 1e-5


def test_equals_peft_model(tiny_setup, tmp_path):
    """Each expert equals PEFT's PeftModel with that adapter; all-ones coefficients equal PEFT with all adapters active."""
    from peft import PeftModel

    base_dir, dirs = tiny_setup
    adapters, mm, reader = _merge_model(base_dir, dirs)
    segments, inputs = _batch(reader, len(adapters))
    mm.set_source(RowRouting(mm.slot, len(adapters)))
    routed = reader.label_logits(mm, segments, inputs)
    for k, (t, s, e) in enumerate(segments.spans):
        nl = adapters.adapters[k].extra["classifier.weight"].shape[0]
        base = BertForSequenceClassification.from_pretrained(base_dir, num_labels=nl, ignore_mismatched_sizes=True)
        peft_model = PeftModel.from_pretrained(base, str(dirs[k])).eval()
        ref = peft_model(**{key: v[s:e] for key, v in inputs.items()}).logits
        assert _rel(routed[k], ref) <= 1e-5
    # all adapters at weight 1: compare encoder hidden states (heads differ per task)
    bare = [_without_head(d, tmp_path / f"bare{k}") for k, d in enumerate(dirs)]
    base = BertForSequenceClassification.from_pretrained(base_dir)
    peft_model = PeftModel.from_pretrained(base, str(bare[0]), adapter_name="a0")
    for k in range(1, len(dirs)):
        peft_model.load_adapter(str(bare[k]), adapter_name=f"a{k}")
    peft_model.base_model.set_adapter([f"a{k}" for k in range(len(dirs))])
    ref = peft_model.base_model.model.bert(**inputs).last_hidden_state
    mm.set_source(FixedCoefs(torch.ones(len(adapters.modules), len(adapters))))
    ours = mm.model.bert(**inputs).last_hidden_state
    assert _rel(ours, ref) <= 1e-5


# ----------------------------------------------------------------------------- a tiny hand-built model

import threading  # noqa: E402

import pytest  # noqa: E402
from torch import nn  # noqa: E402

from mergecore.adapters import Adapter, AdapterSet, LoraFactors  # noqa: E402
from mergecore.errors import MergecoreError  # noqa: E402
from mergecore.forward.model import (MultiLoraLinear, RoutedHead, Segments, Slot, build_head, linear_shape,  # noqa: E402
                             route_heads, wrap_linears)

pytestmark = pytest.mark.usefixtures("one_thread")

D = 4


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.fc = nn.Linear(D, D), nn.Linear(D, 3, bias=False)
        self.up = nn.Linear(3, D)

    def forward(self, x):
        return x + self.up(torch.tanh(self.fc(torch.tanh(self.q(x)))))


class _Net(nn.Module):
    def __init__(self, labels=2):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.classifier = nn.Linear(D, labels)

    def forward(self, x, scale=1.0):
        for b in self.blocks:
            x = b(x)
        return self.classifier(x.mean(1)) * scale


def _factors(out, inp, r, seed, scale):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(A=torch.randn(r, inp, generator=g), B=torch.randn(out, r, generator=g), scale=scale)


SPECS = [  # adapter k: {module: (rank, scale)}, number of labels
    ({"blocks.0.q": (2, 0.5), "blocks.1.fc": (1, 2.0), "blocks.1.q": (3, 1.5)}, 2),
    ({"blocks.0.q": (1, -1.0), "blocks.0.fc": (2, 0.25)}, 3),
]


def _adapters(heads=True, specs=SPECS) -> AdapterSet:
    shapes = {"q": (D, D), "fc": (3, D)}
    out = []
    for k, (mods, nl) in enumerate(specs):
        factors = {m: _factors(*shapes[m.rsplit(".", 1)[1]], r, seed=10 * k + i, scale=s)
                   for i, (m, (r, s)) in enumerate(mods.items())}
        g = torch.Generator().manual_seed(100 + k)
        extra = {"classifier.weight": torch.randn(nl, D, generator=g), "classifier.bias": torch.randn(nl, generator=g)}
        out.append(Adapter(f"t{k}", "src", {"modules_to_save": ["classifier"]}, factors, extra if heads else {}))
    return AdapterSet(tuple(out))


def _dense(adapters, coefs, head=None) -> _Net:
    """W0 + sum_k c_lk s_k B_k A_k in float64, with adapter ``head``'s classifier."""
    net = _Net().double()
    with torch.no_grad():
        for l, name in enumerate(adapters.modules):
            lin = net.get_submodule(name)
            for k, f in enumerate(adapters.factors(name)):
                if f is not None:
                    lin.weight += float(coefs[l, k]) * f.delta()
        if head is not None:
            extra = adapters.adapters[head].extra
            net.classifier = nn.Linear(D, extra["classifier.weight"].shape[0]).double()
            net.classifier.weight.copy_(extra["classifier.weight"])
            net.classifier.bias.copy_(extra["classifier.bias"])
    return net


def _x(n=5, t=3, seed=1):
    return torch.randn(n, t, D, generator=torch.Generator().manual_seed(seed))


def test_fixed_coefficients_equal_dense_recomputation_per_task_head():
    adapters = _adapters()
    mm = MergeModel(_Net(), adapters)
    assert [layer.name for layer in mm.layers] == ["blocks.0.fc", "blocks.0.q", "blocks.1.fc", "blocks.1.q"]
    assert [layer.index for layer in mm.layers] == [0, 1, 2, 3] and mm.num_labels == [2, 3] and mm.num_tasks == 2
    coefs = torch.tensor([[0.7, -0.4], [1.3, 0.2], [-0.5, 0.9], [0.3, 2.0]])
    mm.set_source(FixedCoefs(coefs))
    x = _x()
    segments = Segments([(0, 0, 2), (1, 2, 5)])
    out = mm(segments, x=x, scale=2.0)
    assert out.shape == (5, 3)
    for k, (t, s, e) in enumerate(segments.spans):
        ref = _dense(adapters, coefs.double(), head=t)(x[s:e].double(), scale=2.0)
        assert _rel(out[s:e, :ref.shape[1]], ref) <= 1e-5
        assert torch.equal(out[s:e, ref.shape[1]:], torch.zeros(e - s, 3 - ref.shape[1]))  # padded to widest head


def test_routing_uses_expert_k_on_rows_of_task_k_with_3d_inputs():
    adapters = _adapters()
    mm = MergeModel(_Net(), adapters)
    mm.set_source(RowRouting(mm.slot, 2))
    x = _x(n=6)
    segments = Segments([(1, 0, 2), (0, 2, 3), (1, 3, 6)])
    out = mm(segments, x=x)
    for t, s, e in segments.spans:
        onehot = torch.zeros(4, 2, dtype=torch.float64)
        onehot[:, t] = 1.0
        ref = _dense(adapters, onehot, head=t)(x[s:e].double())
        assert _rel(out[s:e, :ref.shape[1]], ref) <= 1e-5


def test_no_source_is_the_base_model_and_the_base_is_frozen():
    adapters = _adapters()
    net = _Net()
    net.train()
    with pytest.raises(MergecoreError, match=r"^adapter t0 saved modules_to_save \['classifier'\] \(whole trained "
                                             r"modules\) on a seq2seq/causal model; mergecore merges LoRA factors only "
                                             r"there, retrain without modules_to_save$"):
        MergeModel(net, adapters, with_heads=False)
    bare = _adapters(heads=False)
    net = _Net()
    net.train()
    mm = MergeModel(net, bare, with_heads=False)
    assert mm.num_labels == [] and not mm.model.training and mm.model is net
    assert all(not p.requires_grad for p in mm.parameters())
    assert mm.device == torch.device("cpu")
    x = _x()
    ref = _Net()(x)
    assert torch.equal(mm(Segments([(0, 0, 5)]), x=x), ref)
    mm.set_source(FixedCoefs(torch.zeros(4, 2)))
    assert _rel(mm(Segments([(0, 0, 5)]), x=x), ref) <= 1e-6


def test_wrapped_layer_reads_like_the_linear_it_wraps():
    adapters = _adapters()
    net = _Net()
    fc = net.blocks[0].fc
    mm = MergeModel(net, adapters)
    layer = mm.model.blocks[0].fc
    assert isinstance(layer, MultiLoraLinear) and layer.base is fc
    assert layer.weight is fc.weight and layer.bias is None and mm.model.blocks[0].q.bias is not None
    assert mm.model.blocks[0].q.bias is mm.model.blocks[0].q.base.bias
    assert (layer.in_features, layer.out_features) == (D, 3)
    # owner/expand: rank directions of adapter 0 then adapter 1 (2 + 1 on blocks.0.q)
    q = mm.model.blocks[0].q
    assert q.owner.tolist() == [0, 0, 1]
    assert torch.equal(q.expand, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert torch.equal(q.expand_coefs(torch.tensor([2.0, -3.0])), torch.tensor([2.0, 2.0, -3.0]))
    assert torch.equal(q.expand_coefs(torch.tensor([[2.0, -3.0], [0.5, 1.0]])),
                       torch.tensor([[2.0, 2.0, -3.0], [0.5, 0.5, 1.0]]))
    f0, f1 = adapters.factors("blocks.0.q")
    assert torch.equal(q.A_cat, torch.cat([f0.A, f1.A])) and q.A_cat.is_contiguous()
    assert torch.allclose(q.B_cat, torch.cat([f0.scale * f0.B, f1.scale * f1.B], 1))
    assert set(q.state_dict()) == {"base.weight", "base.bias"}  # the stacked factors are not saved with the model
    # per-row coefficients on a 2-D and a 3-D input equal the dense recomputation row by row
    c_r = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    for x in (torch.randn(2, D), torch.randn(2, 5, D)):
        got = q.factored(x, c_r)
        for i in range(2):
            dense = (q.B_cat.double() * c_r[i].double()) @ q.A_cat.double()
            assert _rel(got[i], x[i].double() @ dense.T) <= 1e-6


def test_segments_rows():
    seg = Segments([(1, 0, 2), (0, 2, 5), (2, 5, 6)])
    assert seg.num_rows == 6 and Segments([]).num_rows == 0
    rows = seg.task_of_rows()
    assert rows.dtype == torch.long and rows.tolist() == [1, 1, 0, 0, 0, 2]
    assert Segments([]).task_of_rows().tolist() == []


def test_slot_is_per_thread():
    slot = Slot()
    assert slot.source is None and slot.segments is None
    slot.source = "mine"
    seen = []
    th = threading.Thread(target=lambda: seen.append((slot.source, slot.segments)))
    th.start()
    th.join()
    assert seen == [(None, None)] and slot.source == "mine"


def test_linear_shape_and_refusal():
    from transformers.pytorch_utils import Conv1D

    assert linear_shape(nn.Linear(4, 3), "a") == (3, 4)
    assert linear_shape(Conv1D(3, 4), "a") == (3, 4)  # Conv1D(nf=out, nx=in) stores weight (in, out)
    with pytest.raises(MergecoreError, match=r"^module a\.b is a Conv2d; only Linear \(or GPT-2 Conv1D\) layers can "
                                             r"carry LoRA$"):
        linear_shape(nn.Conv2d(2, 2, 1), "a.b")
    with pytest.raises(MergecoreError, match=r"^module e is a Embedding; only Linear"):
        linear_shape(nn.Embedding(5, 3), "e")  # a 2-D weight, but not a Linear
    odd = Conv1D(3, 4)
    odd.weight = None
    with pytest.raises(MergecoreError, match=r"^module c is a Conv1D; only Linear"):
        linear_shape(odd, "c")
    flat = Conv1D(3, 4)
    flat.weight = nn.Parameter(torch.ones(4))
    with pytest.raises(MergecoreError, match=r"^module c is a Conv1D; only Linear"):
        linear_shape(flat, "c")


def test_wrap_refuses_missing_and_misshaped_modules():
    def one(module, out, inp):
        return AdapterSet((Adapter("t", "s", {}, {module: _factors(out, inp, 1, 0, 1.0)}),))

    with pytest.raises(MergecoreError, match=r"^adapter module blocks\.0\.k does not exist in the base model; check "
                                             r"the base model$"):
        wrap_linears(_Net(), one("blocks.0.k", D, D), Slot())
    with pytest.raises(MergecoreError, match=r"^module blocks\.0\.fc: adapter delta is 4x4 but the base layer is 3x4; "
                                             r"wrong base model$"):
        wrap_linears(_Net(), one("blocks.0.fc", D, D), Slot())
    with pytest.raises(MergecoreError, match=r"^module blocks\.0\.fc: adapter delta is 3x5 but the base layer is 3x4;"):
        wrap_linears(_Net(), one("blocks.0.fc", 3, 5), Slot())
    # a targeted module that is not a Linear: the refusal names the adapter's module
    net = _Net()
    net.blocks[1].q = nn.Embedding(D, D)
    with pytest.raises(MergecoreError, match=r"^module blocks\.1\.q is a Embedding; only Linear \(or GPT-2 Conv1D\) "
                                             r"layers can carry LoRA$"):
        wrap_linears(net, one("blocks.1.q", D, D), Slot())


def test_top_level_module_and_rewrapping():
    net = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, 2))
    first = net[0]
    adapters = AdapterSet((Adapter("t", "s", {}, {"0": _factors(D, D, 2, 0, 0.5), "2": _factors(2, D, 1, 1, 2.0)}),))
    layers = wrap_linears(net, adapters, Slot())
    assert net[0] is layers[0] and layers[0].base is first and [layer.name for layer in layers] == ["0", "2"]
    # wrapping a wrapped model again replaces the wrappers, it does not nest them
    slot = Slot()
    again = wrap_linears(net, adapters, slot)
    assert net[0] is again[0] and again[0].base is first and again[0].slot is slot
    slot.source = FixedCoefs(torch.ones(2, 1))
    x = torch.randn(3, D)
    ref = torch.tanh(x.double() @ (first.weight.double() + adapters.adapters[0].factors["0"].delta()).T
                     + first.bias.double())
    last = again[1].base
    ref = ref @ (last.weight.double() + adapters.adapters[0].factors["2"].delta()).T + last.bias.double()
    assert _rel(net(x), ref) <= 1e-6


def test_build_head_carries_the_adapter_parameters():
    template = nn.Linear(D, 2)
    w, b = torch.randn(5, D, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    head = build_head(template, {"weight": w, "bias": b})
    assert head is not template and template.weight.shape == (2, D) and template.out_features == 2
    assert (head.out_features, head.in_features) == (5, D)
    assert head.weight.dtype == torch.float32 and not head.weight.requires_grad and not head.bias.requires_grad
    x = torch.randn(3, D)
    assert _rel(head(x), x.double() @ w.T + b) <= 1e-6
    w[0, 0] += 1.0  # a copy, not a view of the adapter's tensor
    assert head.weight[0, 0] != w[0, 0].float()
    nested = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, 2))
    built = build_head(nested, {"2.weight": w, "2.bias": b})
    assert built[2].weight.shape == (5, D) and torch.equal(built[0].weight, nested[0].weight)
    assert built[2].out_features == 2  # only a bare Linear head gets its features refreshed
    assert built[0].weight is not nested[0].weight


def test_routed_heads_pad_to_the_widest_and_refuse_a_missing_head():
    adapters = _adapters()
    net = _Net()
    slot = Slot()
    labels = route_heads(net, adapters, slot)
    assert labels == [2, 3] and isinstance(net.classifier, RoutedHead) and net.classifier.num_labels == [2, 3]
    slot.segments = Segments([(1, 0, 1), (0, 1, 3)])
    x = torch.randn(3, D)
    out = net.classifier(x)
    for t, s, e in slot.segments.spans:
        extra = adapters.adapters[t].extra
        ref = x[s:e].double() @ extra["classifier.weight"].double().T + extra["classifier.bias"].double()
        assert _rel(out[s:e, :ref.shape[1]], ref) <= 1e-6 and (out[s:e, ref.shape[1]:] == 0).all()
    missing = AdapterSet((adapters.adapters[0], Adapter("t1", "s", {}, adapters.adapters[1].factors,
                                                        {"blocks.1.up.weight": torch.ones(D, 3)})))
    with pytest.raises(MergecoreError, match=r"^adapter t0 has no saved head 'blocks\.1\.up' \(modules_to_save\); every "
                                             r"task needs its own head$"):
        route_heads(_Net(), missing, Slot())


def test_head_width_is_the_last_linear_of_a_two_layer_head():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense, self.out_proj = nn.Linear(D, D), nn.Linear(D, 2)

        def forward(self, x):
            return self.out_proj(torch.tanh(self.dense(x)))

    class Net2(_Net):
        def __init__(self):
            super().__init__()
            self.classifier = Head()

    specs = [({"blocks.0.q": (1, 1.0)}, 3), ({"blocks.0.q": (1, 1.0)}, 5)]
    base = _adapters(specs=specs)
    adapters = AdapterSet(tuple(
        Adapter(a.name, a.source, a.config, a.factors,
                {"classifier.out_proj.weight": torch.randn(n, D), "classifier.out_proj.bias": torch.randn(n),
                 "classifier.dense.weight": torch.randn(D, D)})
        for a, n in zip(base.adapters, (3, 5))))
    mm = MergeModel(Net2(), adapters)
    assert mm.num_labels == [3, 5]
    mm.set_source(FixedCoefs(torch.zeros(1, 2)))
    x = _x(n=2)
    out = mm(Segments([(0, 0, 1), (1, 1, 2)]), x=x)
    assert out.shape == (2, 5) and (out[0, 3:] == 0).all() and (out[1] != 0).all()


def test_routed_head_passes_extra_arguments_to_each_head():
    class Scaled(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, x, factor, shift=0.0):
            return x[:, : self.w] * factor + shift

    slot = Slot()
    slot.segments = Segments([(0, 0, 2), (1, 2, 3)])
    head = RoutedHead([Scaled(2), Scaled(3)], [2, 3], slot)
    x = torch.arange(12.0).reshape(3, 4)
    out = head(x, 2.0, shift=1.0)
    assert torch.equal(out, torch.tensor([[1.0, 3.0, 0.0], [9.0, 11.0, 0.0], [17.0, 19.0, 21.0]]))


def test_num_labels_come_from_the_output_head_when_an_inner_module_is_saved_too():
    """modules_to_save=["pooler", "classifier"] on BERT: 'bert.pooler' sorts first, but the logits come from the
    classifier (registered last); each task's inner module copy is routed as well."""
    base = _adapters()
    adapters = AdapterSet(tuple(
        Adapter(a.name, a.source, a.config, a.factors,
                {**a.extra, "blocks.1.up.weight": torch.randn(D, 3, generator=torch.Generator().manual_seed(k)),
                 "blocks.1.up.bias": torch.zeros(D)})
        for k, a in enumerate(base.adapters)))
    assert adapters.adapters[0].head_modules == ["blocks.1.up", "classifier"]
    mm = MergeModel(_Net(), adapters)
    assert mm.num_labels == [2, 3]
    coefs = torch.tensor([[0.7, -0.4], [1.3, 0.2], [-0.5, 0.9], [0.3, 2.0]])
    mm.set_source(FixedCoefs(coefs))
    x = _x()
    segments = Segments([(0, 0, 2), (1, 2, 5)])
    out = mm(segments, x=x)
    for t, s, e in segments.spans:
        dense = _dense(adapters, coefs.double(), head=t)
        with torch.no_grad():
            dense.blocks[1].up.weight.copy_(adapters.adapters[t].extra["blocks.1.up.weight"])
            dense.blocks[1].up.bias.zero_()
        ref = dense(x[s:e].double())
        assert _rel(out[s:e, :ref.shape[1]], ref) <= 1e-5


def test_num_labels_follow_model_order_not_name_order():
    """DeBERTa-v2 registers ``pooler`` before ``classifier``: the logits come from the classifier although
    'pooler' sorts after it."""
    class Pooled(_Net):
        def __init__(self):
            super().__init__()
            del self.classifier
            self.pooler = nn.Linear(D, D)
            self.classifier = nn.Linear(D, 2)

        def forward(self, x):
            return self.classifier(torch.tanh(self.pooler(x.mean(1))))

    base = _adapters()
    adapters = AdapterSet(tuple(
        Adapter(a.name, a.source, a.config, a.factors,
                {**a.extra, "pooler.weight": torch.randn(D, D), "pooler.bias": torch.randn(D)})
        for a in base.adapters))
    assert adapters.adapters[0].head_modules == ["classifier", "pooler"]
    mm = MergeModel(Pooled(), adapters)
    assert mm.num_labels == [2, 3]
    assert isinstance(mm.model.pooler, RoutedHead) and mm.model.pooler.num_labels == [D, D]
    assert MergeModel(_Net(), _adapters(heads=False)).num_labels == []


def test_a_head_missing_from_the_base_model_is_refused():
    base = _adapters()
    adapters = AdapterSet(tuple(Adapter(a.name, a.source, a.config, a.factors, {**a.extra, "pooler.weight": torch.ones(D, D)})
                                for a in base.adapters))
    with pytest.raises(MergecoreError, match=r"^adapter head pooler \(modules_to_save\) does not exist in the base "
                                             r"model; check the base model$"):
        MergeModel(_Net(), adapters)


def test_expanded_coefficients_stay_float32_under_autocast():
    from mergecore.forward.model import MultiLoraLinear, Slot

    layer = MultiLoraLinear(torch.nn.Linear(4, 3), 0, "x", torch.randn(3, 4), torch.randn(3, 3), torch.tensor([0, 0, 1]),
                            Slot(), num_adapters=2)
    c = torch.tensor([0.1234567, 0.7654321])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = layer.expand_coefs(c)
    assert inside.dtype == torch.float32 and torch.equal(inside, c[[0, 0, 1]])  # not rounded to bf16
    assert torch.equal(layer.expand_coefs(c), c[[0, 0, 1]])
