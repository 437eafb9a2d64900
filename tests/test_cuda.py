"""CUDA: the factored model and the learner give the CPU's results on a GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch
from test_learn import tiny_bench

from mergecore.forward.coefs import FixedCoefs, RowRouting
from mergecore.learn.learner import Learner
from mergecore.learn.params import LearnParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


def test_cuda_forward_equals_cpu(tiny_setup):
    bench = tiny_bench(tiny_setup)
    coefs = torch.randn(bench.num_modules, bench.num_tasks, generator=torch.Generator().manual_seed(0))
    cpu = bench.predict(FixedCoefs(coefs))
    cpu_routed = bench.predict(RowRouting(bench.model.slot, bench.num_tasks))
    bench.model.to("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = bench.predict(FixedCoefs(coefs))
    gpu_routed = bench.predict(RowRouting(bench.model.slot, bench.num_tasks))
    for a, b in zip(cpu + cpu_routed, gpu + gpu_routed):
        assert torch.allclose(a, b.cpu(), atol=1e-5)


@pytest.mark.parametrize("granularity", ["task", "layer", "spectral"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_learning_runs(tiny_setup, granularity, precision):
    bench = tiny_bench(tiny_setup)
    bench.model.to("cuda")
    res = Learner(bench, LearnParams(granularity=granularity, precision=precision, steps=4, batch_size=4,
                                     eval_every=2, eval_limit=6)).run()
    assert res.status == "done" and torch.isfinite(res.coefs).all()
