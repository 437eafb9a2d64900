"""Coefficient granularities: block grouping of real module names, and the (G, K) rows each module reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergecore.forward.coefs import block_coefs, block_index, layer_coefs, task_coefs

# (module name as PEFT lists it, the block it belongs to), written by hand from each family's module tree
FAMILIES = {
    "bert": [("bert.encoder.layer.0.attention.self.query", "bert.encoder.0"),
             ("bert.encoder.layer.0.attention.self.value", "bert.encoder.0"),
             ("bert.encoder.layer.1.attention.self.query", "bert.encoder.1"),
             ("bert.encoder.layer.10.output.dense", "bert.encoder.10"),
             ("bert.pooler.dense", "bert.pooler.dense")],  # outside any block: a group of its own
    "t5": [("encoder.block.0.layer.0.SelfAttention.q", "encoder.0"),  # the block, not the sub-layer, groups
           ("encoder.block.0.layer.1.DenseReluDense.wi", "encoder.0"),
           ("decoder.block.0.layer.1.EncDecAttention.q", "decoder.0"),  # same number, other stack
           ("encoder.block.2.layer.0.SelfAttention.v", "encoder.2")],
    "llama": [("lm_head", "lm_head"),  # natural order puts it first; the blocks after it still count
              ("model.layers.1.self_attn.q_proj", "model.1"),
              ("model.layers.1.mlp.down_proj", "model.1"),
              ("model.layers.0.self_attn.v_proj", "model.0")],
    "gpt2": [("transformer.h.0.attn.c_attn", "transformer.0"),
             ("transformer.h.11.mlp.c_fc", "transformer.11"),
             ("transformer.h.0.mlp.c_proj", "transformer.0")],
    "gpt2-bare": [("h.0.attn.c_attn", "0"),  # GPT2Model: the name starts with its block
                  ("h.1.attn.c_attn", "1"),
                  ("h.0.mlp.c_fc", "0")],
    "clip": [("vision_model.encoder.layers.3.self_attn.k_proj", "vision_model.encoder.3"),
             ("text_model.encoder.layers.3.self_attn.k_proj", "text_model.encoder.3")],
    "detr-head": [("bbox_predictor.layers.0", "bbox_predictor.0"),  # the name ends with its index
                  ("bbox_predictor.layers.2", "bbox_predictor.2")],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_block_index_groups_real_module_names_by_block(family):
    modules, blocks = zip(*FAMILIES[family])
    group, names = block_index(list(modules))
    expected_names = list(dict.fromkeys(blocks))  # first-appearance order
    assert names == expected_names
    assert group.dtype == torch.long
    assert group.tolist() == [expected_names.index(b) for b in blocks]


def test_block_index_of_no_modules_is_an_empty_index():
    group, names = block_index([])
    assert names == [] and group.dtype == torch.long and group.numel() == 0


def test_layer_coefs_one_row_per_module_from_a_task_row_or_a_matrix():
    init = torch.tensor([0.2, -0.5, 0.9])
    src = layer_coefs(init, 4)
    assert src.kind == "layer"
    assert torch.equal(src.gamma.detach(), init.expand(4, 3))
    assert src.group.tolist() == [0, 1, 2, 3]
    matrix = torch.arange(12.0).reshape(4, 3)
    src = layer_coefs(matrix, 4)  # an (L, K) start is the parameter itself, not repeated
    assert torch.equal(src.gamma.detach(), matrix) and torch.equal(src.to_matrix().detach(), matrix)


def test_task_coefs_one_shared_row():
    init = torch.tensor([0.3, 0.7])
    src = task_coefs(init, 5)
    assert src.kind == "task"
    assert torch.equal(src.gamma.detach(), init.reshape(1, 2))
    assert torch.equal(src.to_matrix().detach(), init.expand(5, 2))


def test_block_coefs_one_row_per_block_shared_by_its_modules():
    modules = [m for m, _ in FAMILIES["t5"]]
    init = torch.tensor([0.25, 0.75])
    src = block_coefs(init, modules)
    assert src.kind == "block"
    assert torch.equal(src.gamma.detach(), init.expand(3, 2))  # encoder.0, decoder.0, encoder.2
    with torch.no_grad():
        src.gamma.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    assert src.to_matrix().tolist() == [[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def test_clamp_and_softmax_switches_change_the_coefficients_the_forward_uses():
    from mergecore.forward.coefs import coefficient_transform
    from mergecore.errors import MergecoreError

    gamma = torch.tensor([[-0.5, 0.25, 1.5], [0.0, 2.0, -1.0]])
    src = layer_coefs(gamma, 2)
    assert torch.equal(src.effective(), src.gamma)  # no switch: the raw coefficients
    src.transform = coefficient_transform(clamp=True, softmax=False)
    assert src.effective().tolist() == [[0.0, 0.25, 1.0], [0.0, 1.0, 0.0]]
    src.transform = coefficient_transform(clamp=False, softmax=True)
    e = np.exp(gamma.double().numpy())
    np.testing.assert_allclose(src.effective().detach().numpy(), e / e.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(src.to_matrix().detach().numpy(), e / e.sum(1, keepdims=True), rtol=1e-6)
    assert coefficient_transform(clamp=False, softmax=False) is None
    with pytest.raises(MergecoreError, match=r"^choose at most one of clamp and softmax for the coefficients$"):
        coefficient_transform(clamp=True, softmax=True)


def test_row_routing_one_hot_per_row_follows_the_batch_segments_and_expert_map():
    from types import SimpleNamespace

    from mergecore.forward.coefs import RowRouting
    from mergecore.forward.model import Segments

    slot = SimpleNamespace(segments=Segments([(0, 0, 2), (2, 2, 3)]))  # rows 0-1 task 0, row 2 task 2
    routing = RowRouting(slot, 3)
    assert routing.onehot("cpu").tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    slot.segments = Segments([(1, 0, 1), (0, 1, 3)])  # a new batch: rebuilt, not the cached one
    assert routing.onehot("cpu").tolist() == [[0, 1, 0], [1, 0, 0], [1, 0, 0]]
    mapped = RowRouting(slot, 3, experts=[2, 0, 1])  # task k is answered by expert experts[k]
    assert mapped.onehot("cpu").tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert mapped.onehot("cpu").dtype == torch.float32
