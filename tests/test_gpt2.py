"""GPT-2 shapes: Conv1D layers (weight stored in x out) carry LoRA like Linear layers."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mergecore.adapters import load_adapters
from mergecore.forward.coefs import FixedCoefs, RowRouting
from mergecore.forward.model import MergeModel, Segments

from conftest import randomize_lora


def _adapter(base_dir, out, seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    pm = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True))
    randomize_lora(pm, 0.3)
    pm.save_pretrained(out)
    return out


def test_gpt2_routed_experts_equal_peft_and_dense(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "base")
    dirs = [_adapter(tmp_path / "base", tmp_path / f"a{k}", k + 1) for k in range(2)]
    adapters = load_adapters(dirs)
    mm = MergeModel(GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval(), adapters, with_heads=False)
    ids = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(1))
    segments = Segments([(0, 0, 2), (1, 2, 4)])
    mm.set_source(RowRouting(mm.slot, 2))
    routed = mm(segments, input_ids=ids).logits
    for k, (t, s, e) in enumerate(segments.spans):
        ref = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), str(dirs[k])).eval()
        expected = ref(input_ids=ids[s:e]).logits
        assert torch.allclose(routed[s:e], expected, atol=1e-5 * float(expected.abs().max()))
    # a coefficient mix equals the dense recomputation W0 + sum_k c_k s_k (B_k A_k)^T in Conv1D layout
    c = torch.tensor([0.7, -0.4])
    mm.set_source(FixedCoefs(c.repeat(len(adapters.modules), 1)))
    ours = mm(Segments([(0, 0, 4)]), input_ids=ids).logits
    dense = GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        for name in adapters.modules:
            conv = dense.get_submodule(name)
            delta = sum(c[k] * f.delta() for k, f in enumerate(adapters.factors(name)))
            conv.weight.copy_((conv.weight.double() + delta.T).float())
    with torch.no_grad():
        expected = dense(input_ids=ids).logits
    assert torch.allclose(ours, expected, atol=1e-5 * float(expected.abs().max()))
