"""Layer inputs under the pre-trained model: OSRM's feature matrix H, read with forward pre-hooks."""

from __future__ import annotations

import torch

from mergecore.errors import MergecoreError
from mergecore.forward.verbalizer import accepts
from mergecore.forward.workbench import Workbench


@torch.no_grad()
def collect_features(bench: Workbench, samples: int = 64, max_rows: int = 256) -> dict[str, dict[int, torch.Tensor]]:
    """OSRM's H: the input of every wrapped layer on each label task's calibration data under the
    pre-trained model, ONE row per example: the mean of the layer's input over the example's real
    tokens (attention mask: no padding) in the reader's example-level forward (the prompt; no repeat
    per label for verbalizer readers; a seq2seq decoder sees its start token). Layers fed one row per
    example (a pooler) keep that row. Generative tasks have no features (absent key).

    Returns {module: {task: (n, in)}} float32 on the CPU, rows in example order."""
    feats: dict[str, dict[int, list]] = {layer.name: {} for layer in bench.model.layers}
    state: dict = {}

    def hook(mod, args):
        x, mask = args[0], state["mask"]  # x (n, T, in) or (n, in); mask (n, T) of the example-level inputs
        if x.shape[0] != mask.shape[0] or x.ndim not in (2, 3):
            raise MergecoreError(f"module {mod.name}: input {tuple(x.shape)} has no one-row-per-example layout "
                                 f"({mask.shape[0]} examples); OSRM features cannot be read there")
        if x.ndim == 2:
            rows = x.float()
        else:  # this forward's own tokens: the encoder / prompt (masked), or the decoder's start token
            m = (mask if x.shape[1] == mask.shape[1] else torch.ones(x.shape[:2], device=x.device)).float()
            rows = (x.float() * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
        feats[mod.name].setdefault(state["task"], []).append(rows.cpu())

    extra = {"logits_to_keep": 1} if bench.reader.family == "causal" and accepts(bench.model.model, "logits_to_keep") else {}
    hooks = [layer.register_forward_pre_hook(hook) for layer in bench.model.layers]
    try:
        bench.model.set_source(bench.pretrained())
        for k in bench.label_tasks:
            enc = bench.encoded(k, "calibration", limit=samples)
            for start in range(0, len(enc), max(1, max_rows)):
                idx = torch.arange(start, min(start + max_rows, len(enc)))
                segments, inputs = bench.reader.batch([(k, enc, idx)], bench.device)
                state["task"], state["mask"] = k, inputs["attention_mask"].bool()
                bench.model(segments, **inputs, **extra)  # example-level forward: n rows, never n * C
    finally:
        for h in hooks:
            h.remove()
    return {name: {k: torch.cat(chunks) for k, chunks in per_task.items()} for name, per_task in feats.items()}
