"""Learner: merge coefficients from unlabeled data (SourceJS / DivMerge / AdaMerging).

Stage 1 caches each expert's label distribution on its own task's calibration inputs, routed (row i
of task k goes through expert k only). The learner runs it on demand (``ExpertReferences``): a row's
distribution is computed the first time a batch holds it, so the first step waits for its own rows
only, not for every row (the first point of a live chart comes seconds earlier; the total work is the
same). For a generative task it caches the expert's greedy outputs and their top-k token distributions
up front (DivMerge App. B.1, generative.py).
Stage 2 runs Adam with a cosine schedule on the coefficients only: every step is one forward +
backward of the MergeModel on a batch holding all label tasks' rows (plus one teacher-forced
forward per generative task); the loss is the sum over tasks of the mean per-example objective
(token-level JS/KL per sequence for generative tasks), plus the L2 pull lambda ||Gamma - Gamma_0||^2
(SourceJS Eq. 7): toward uniform Gamma_0 = 1/K by default (as the paper writes it), toward the
start point with ``l2_target='start'``, toward gains of 1 (the start merge) for spectral runs.
A step whose loss or gradient is not finite stops the run ("failed") before the optimizer moves.

Events (stage: Stage 2 starting; step: loss, per-task loss, lr, coefficients, grad norm, seconds;
eval: the periodic evaluation) go to a sink callback; ``stop`` (a threading.Event) is checked between steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from mergecore.analysis.calibration import confidence_summary
from mergecore.errors import MergecoreError
from mergecore.forward.coefs import MatrixCoefs, block_coefs, coefficient_transform, layer_coefs, task_coefs
from mergecore.forward.evaluate import task_scores
from mergecore.forward.spectral import SpectralCoefs
from mergecore.forward.workbench import Workbench
from mergecore.learn.objectives import get_objective, l2_pull
from mergecore.learn.params import GENERATIVE_OBJECTIVES, GRANULARITIES, LearnParams
from mergecore.merged import coefs_to_merge


def l2_anchor(gamma: torch.Tensor, target: str, num_tasks: int) -> torch.Tensor:
    """Gamma_0 of the L2 pull for a coefficient parameter: 1/K everywhere (SourceJS Eq. 7) or its start value."""
    if target == "start":
        return gamma.detach().clone()
    return torch.full_like(gamma, 1.0 / num_tasks).detach()


@dataclass
class LearnResult:
    coefs: torch.Tensor  # (L, K) coefficients per module (zeros for spectral runs: see merge)
    status: str  # done | cancelled | failed
    message: str
    steps_done: int
    seconds: float
    merge: dict | None = None  # spectral runs: the rethought merged update per module
    spectral: dict | None = None  # spectral runs: learned gains and starting singular values


class BatchSampler:
    """Per-task shuffled epochs over row indices, from one seeded generator."""

    def __init__(self, sizes: list[int], seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.sizes = sizes
        self.perms = [torch.empty(0, dtype=torch.long) for _ in sizes]

    def take(self, k: int, n: int) -> torch.Tensor:
        while len(self.perms[k]) < n:
            self.perms[k] = torch.cat([self.perms[k], torch.randperm(self.sizes[k], generator=self.gen)])
        idx, self.perms[k] = self.perms[k][:n], self.perms[k][n:]
        return idx


def make_source(bench: Workbench, granularity: str, init: torch.Tensor) -> MatrixCoefs:
    """A learnable coefficient source; ``init`` is (K,) or (L, K)."""
    L = bench.num_modules
    if granularity == "task":
        return task_coefs(init if init.ndim == 1 else init.mean(0), L)
    if granularity == "layer":
        return layer_coefs(init, L)
    if granularity == "block":
        return block_coefs(init if init.ndim == 1 else init.mean(0), bench.adapters.modules)
    raise MergecoreError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")


class ExpertReferences:
    """Stage 1 on demand: expert k's label distribution on task k's calibration rows, computed in one
    routed forward for the rows of a batch that were not computed before, and kept. ``refs[k]`` is task
    k's (n_k, C_k) cache (rows no batch held yet are 0); a generative task's slot holds what
    ``references`` stores there."""

    def __init__(self, bench: Workbench, samples: int):
        self.bench = bench
        self.slots: list = [None] * bench.num_tasks
        self.known = {k: torch.zeros(len(bench.encoded(k, "calibration", limit=samples)), dtype=torch.bool)
                      for k in bench.label_tasks}

    def __getitem__(self, k: int):
        return self.slots[k]

    def __setitem__(self, k: int, value) -> None:
        self.slots[k] = value

    def fill(self, parts: list, source) -> None:
        """Compute the rows of ``parts`` [(task, encoded, row indices)] not computed yet; the model's
        coefficient source is ``source`` again afterwards."""
        bench = self.bench
        missing = [(k, enc, torch.unique(idx[~self.known[k][idx]])) for k, enc, idx in parts if k in self.known]
        missing = [part for part in missing if len(part[2])]
        if not missing:
            return
        bench.model.set_source(bench.routing())
        with torch.no_grad():
            segments, inputs = bench.reader.batch(missing, bench.device)
            for (k, _, idx), logits in zip(missing, bench.reader.label_logits(bench.model, segments, inputs)):
                if self.slots[k] is None:
                    self.slots[k] = torch.zeros(len(self.known[k]), logits.shape[-1], device=bench.device)
                self.slots[k][idx.to(bench.device)] = torch.softmax(logits, -1)  # (rows, C_k)
                self.known[k][idx] = True
        bench.model.set_source(source)


def references(bench: Workbench, params: LearnParams) -> list | ExpertReferences:
    """What each task's loss compares against: expert probabilities (Stage 1, an ``ExpertReferences``
    the learner fills batch by batch), labels, nothing, or (generative tasks) the expert's cached greedy
    outputs and top-k token distributions."""
    kind = get_objective(params.objective).reference
    generative = [k for k, t in enumerate(bench.tasks) if t.generative]
    if generative and params.objective not in GENERATIVE_OBJECTIVES:
        raise MergecoreError(f"task {bench.tasks[generative[0]].name} is generative; it learns with "
                             f"{' or '.join(GENERATIVE_OBJECTIVES)} on the expert's outputs (got {params.objective})")
    refs: list | ExpertReferences = [None] * bench.num_tasks
    if kind == "expert":
        refs = ExpertReferences(bench, params.samples)
    elif kind == "labels":
        for k, t in enumerate(bench.tasks):
            if t.calibration.labels is None:
                raise MergecoreError(f"the ce objective needs labels; task {t.name} has an unlabeled calibration split")
            refs[k] = t.class_ids(t.calibration.labels[: params.labeled]).to(bench.device)  # regression: nearest bin
    for k in generative:  # DivMerge App. B.1: expert k decodes its own task's prompts once (decoding settings only)
        prompts = [bench.tasks[k].render(f) for f in bench.tasks[k].calibration.inputs[: params.samples]]
        refs[k] = bench.generator.expert_outputs(k, prompts, bench.gen_params)
    return refs


def periodic_eval(bench: Workbench, source, expert_probs: list[torch.Tensor], limit: int) -> dict:
    """Metric, mean confidence, agreement with the expert and confidently-wrong share per task."""

    probs = bench.predict(source, "evaluation", limit=limit)
    ks = bench.label_tasks  # generative tasks have no label confidence; they are scored at the end (ROUGE-1)
    limited = [replace(bench.tasks[k], evaluation=bench.tasks[k].evaluation.head(limit)) for k in ks]
    out = {"score": task_scores(limited, [probs[k] for k in ks]), "confidence": {}, "agreement": {},
           "confidently_wrong": {}}
    for t, p, pe in zip(limited, [probs[k] for k in ks], [expert_probs[k] for k in ks]):
        gold = torch.tensor(t.evaluation.labels[:limit])
        never_wrong = torch.ones(len(p), dtype=torch.bool) if t.metric == "pearson_spearman" else None  # regression
        s = confidence_summary(p, gold, pe, correct=never_wrong)  # confidently wrong: confidence >= 0.9
        out["confidence"][t.name] = s["mean_confidence"]
        out["agreement"][t.name] = s["agreement"]
        out["confidently_wrong"][t.name] = s["confidently_wrong"]
    return out


def precision_context(precision: str, device: torch.device):
    """bf16 autocast on CUDA when asked; TF32 matmuls on CUDA unless fp32 is asked; no-op on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    torch.backends.cudnn.allow_tf32 = precision != "fp32"
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Learner:
    """Learns merge coefficients on a Workbench; same results from the CLI and the app.

    ``start``: initial coefficients (K,) or (L, K) for task/layer/block granularity.
    ``start_merge``: the merged update spectral learning starts from (default: uniform 1/K).
    """

    def __init__(self, bench: Workbench, params: LearnParams, start: torch.Tensor | None = None,
                 start_merge: dict | None = None):
        self.bench, self.params = bench, params.validate()
        self.objective = get_objective(params.objective)
        self.gen_params = replace(bench.gen_params, divergence=params.objective)  # generative tasks' token divergence
        K = bench.num_tasks
        if params.granularity == "spectral":
            self.merge = start_merge or coefs_to_merge(bench.adapters, torch.full((bench.num_modules, K), 1.0 / K))
            self._new_source(self.merge)
        else:
            init = start if start is not None else torch.full((K,), params.start_value(K))
            self.source = make_source(bench, params.granularity, init.float()).to(bench.device)
            self.source.transform = coefficient_transform(params.clamp, params.softmax)
            self.gamma0 = l2_anchor(self.source.gamma, params.l2_target, K)

    def _new_source(self, merge: dict) -> None:
        self.source = SpectralCoefs(merge, self.bench.adapters.modules, self.bench.device)
        self.gamma0 = torch.ones_like(self.source.gamma).detach()  # the L2 pull is toward Lambda = 1 (the start merge)

    def _encoded(self, refs: list) -> list:
        """Rows each task samples from: encoded calibration inputs, or a generative task's cached expert outputs."""
        n = self.params.labeled if self.objective.reference == "labels" else self.params.samples
        return [refs[k] if t.generative else self.bench.encoded(k, "calibration", limit=n)
                for k, t in enumerate(self.bench.tasks)]

    def _step_loss(self, parts, refs) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over tasks of the mean per-example objective (+ L2 pull); label tasks share one forward."""
        bench, losses = self.bench, {}
        label_parts = [part for part in parts if not bench.tasks[part[0]].generative]
        with precision_context(self.params.precision, bench.device):
            if label_parts:
                segments, inputs = bench.reader.batch(label_parts, bench.device)
                for (k, _, idx), lg in zip(label_parts, bench.reader.label_logits(bench.model, segments, inputs)):
                    ref = None if refs[k] is None else refs[k][idx.to(bench.device)]
                    losses[k] = self.objective.fn(ref, torch.log_softmax(lg, -1)).mean()
            for k, cache, idx in parts:
                if bench.tasks[k].generative:  # teacher-forced on the expert's output, token JS/KL per sequence
                    losses[k] = bench.generator.divergence(k, cache, idx, self.gen_params).mean()
        per_task = torch.stack([losses[k] for k, _, _ in parts])  # (K,)
        return per_task.sum() + l2_pull(self.source.gamma, self.gamma0, self.params.l2), per_task

    def run(self, sink: Callable[[str, int, dict], None] | None = None, stop=None) -> LearnResult:
        p, bench, t0 = self.params, self.bench, time.perf_counter()
        sink = sink or (lambda kind, step, payload: None)
        ctx = {"sink": sink, "stop": stop, "t0": t0, "refs": references(bench, p)}
        ctx["encoded"] = self._encoded(ctx["refs"])
        ctx["expert_eval"] = None  # the experts on the evaluation split: computed at the first periodic evaluation
        ctx["sampler"] = BatchSampler([len(e) for e in ctx["encoded"]], p.seed)
        on_demand = ", Stage 1 (the experts' predictions) on each batch's new rows" * (self.objective.reference == "expert")
        sink("stage", 0, {"stage": "learning",
                          "text": f"Stage 2: {p.steps} steps of {p.objective}, {p.granularity}-wise{on_demand}"})
        phases = p.iterations if p.granularity == "spectral" else 1
        per_phase = math.ceil(p.steps / phases)
        status, message, step = "done", "", 0
        for phase in range(phases):
            if phase:  # iterative rethinking: re-decompose the rethought delta, fresh gains (LoRA-DV Eq. 9-11)
                self.merge = self.source.to_merge()
                self._new_source(self.merge)
            n = min(per_phase, p.steps - step)
            if n <= 0:  # fewer steps than rethinking iterations
                break
            status, message, step = self._phase(ctx, step, n)
            if status != "done":
                break
        return self._result(status, message, step, time.perf_counter() - t0)

    def _result(self, status: str, message: str, step: int, seconds: float) -> LearnResult:
        if self.params.granularity == "spectral":
            K = self.bench.num_tasks
            return LearnResult(torch.zeros(self.bench.num_modules, K), status, message, step, seconds,
                               merge=self.source.to_merge(), spectral=self.source.tensors())
        return LearnResult(self.source.to_matrix().detach().cpu(), status, message, step, seconds)

    def _phase(self, ctx: dict, step0: int, n: int) -> tuple[str, str, int]:
        """``n`` Adam steps with a cosine schedule on the current source; returns (status, message, last step)."""
        p, bench, sink = self.params, self.bench, ctx["sink"]
        opt = torch.optim.Adam(self.source.parameters(), lr=p.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, n) / n)))
        bench.model.set_source(self.source)
        message, step = "", step0
        for step in range(step0 + 1, step0 + n + 1):
            if ctx["stop"] is not None and ctx["stop"].is_set():
                return "cancelled", f"stopped by the user after {step - 1} steps", step - 1
            parts = [(k, e, ctx["sampler"].take(k, min(p.batch_size, len(e)))) for k, e in enumerate(ctx["encoded"])]
            if isinstance(ctx["refs"], ExpertReferences):
                ctx["refs"].fill(parts, self.source)
            loss, per_task = self._step_loss(parts, ctx["refs"])
            if not torch.isfinite(loss):
                return "failed", f"loss became {float(loss.detach())} at step {step}; kept the coefficients of step {step - 1}", step - 1
            lr = opt.param_groups[0]["lr"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(self.source.gamma.grad.norm())
            if not math.isfinite(grad_norm):  # a NaN / inf gradient would poison Adam's moments: stop before the step
                return ("failed", f"gradient became {grad_norm} at step {step} (loss {float(loss.detach()):.4g}); "
                        f"kept the coefficients of step {step - 1}", step - 1)
            opt.step()
            sched.step()
            coefs = self.source.effective().detach().cpu()
            sink("step", step, {
                "loss": float(loss.detach()), "task_loss": dict(zip(bench.tasks.names, per_task.detach().tolist())),
                "lr": lr, "coefs": coefs.tolist(), "grad_norm": grad_norm, "seconds": time.perf_counter() - ctx["t0"],
            })
            if float(coefs.abs().max()) > 100:
                message = f"coefficients are exploding (max |c| = {float(coefs.abs().max()):.3g}); lower lr or raise l2"
            if p.eval_every and (step % p.eval_every == 0 or step == p.steps):
                if ctx["expert_eval"] is None:
                    ctx["expert_eval"] = bench.predict(bench.routing(), "evaluation", limit=p.eval_limit)
                sink("eval", step, periodic_eval(bench, self.source, ctx["expert_eval"], p.eval_limit))
                bench.model.set_source(self.source)
        return "done", message, step
