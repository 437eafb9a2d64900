"""torch.compile of the wrapped model (issue 18 part 4): the layer index must not be a guard.

Each ``MultiLoraLinear`` reads its coefficient row by a python int (``layer.index``). Compiled as a whole, the
model is one frame: Dynamo inlines every wrapped layer into a single graph, so the indices are constants of
that graph, not guards that recompile per layer. Traced with the ``eager`` backend (Dynamo's capture without
code generation: seconds on a CPU); the GPU bench times inductor (bench/learn_step.py --compile)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from mergecore.forward.coefs import layer_coefs, task_coefs
from mergecore.forward.model import Segments

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    from test_placement import small_llama

    from mergecore.adapters import load_adapters
    from mergecore.forward.model import MergeModel
    from transformers import LlamaForCausalLM

    dirs = small_llama(tmp_path_factory.mktemp("compile"))  # the placement tests' small Llama and two adapters
    return MergeModel(LlamaForCausalLM.from_pretrained(dirs[0].parent / "base"), load_adapters(dirs), with_heads=False)


@pytest.mark.parametrize("make", [task_coefs, layer_coefs], ids=["task", "layer"])
def test_compiled_model_is_one_graph_without_recompiles(merged, make):
    torch._dynamo.reset()
    counters.clear()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    merged.slot.segments = Segments([(0, 0, 2)])
    grads = {}
    for name, model in (("eager", merged.model), ("compiled", torch.compile(merged.model, backend="eager"))):
        source = make(torch.tensor([0.3, 0.6]), len(merged.layers))
        merged.set_source(source)
        for _ in range(3):  # three steps: a guard on anything that changes per step would recompile here
            source.gamma.grad = None
            model(input_ids=ids).logits.float().pow(2).mean().backward()
        grads[name] = source.gamma.grad.clone()
    assert dict(counters["frames"]) == {"total": 1, "ok": 1}  # one frame for the whole model: no per-layer frames
    assert not counters["recompiles"] and not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(grads["compiled"], grads["eager"], rtol=1e-5, atol=1e-7)
