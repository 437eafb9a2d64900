"""MergeModel equals a dense recomputation and PEFT's own model with the same adapters."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from mergecore.adapters import load_adapters
from mergecore.coefs import FixedCoefs, RowRouting
from mergecore.heads import ClassifierReader
from mergecore.model import MergeModel

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
