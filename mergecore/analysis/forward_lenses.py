"""Lenses that run the model: divergence matrix, representation bias, confidence diagnostics.

All of them compare a model with the experts on the experts' own tasks and run in the
Workbench's MergeModel (factored forward; experts via per-row routing). Cached like the
static lenses (see ``lenses.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..evaluate import predictions
from ..metrics import score
from .calibration import confidence_summary, confidently_wrong_share, expected_calibration_error, reliability_bins
from .divergence import divergence_matrix, spearman_with_scores
from .lenses import LensParams, _matrix, cached, lens_key
from .representation import representation_bias


class RowExperts:
    """Coefficient source: row n of the batch uses expert ``expert_of_row[n]`` only (one-hot)."""

    def __init__(self, expert_of_row: torch.Tensor, num_tasks: int):
        self.onehot = torch.nn.functional.one_hot(expert_of_row.long(), num_tasks).float()  # (N, K)

    def lora_term(self, layer, x: torch.Tensor) -> torch.Tensor:
        return layer.factored(x, self.onehot.to(x.device)[:, layer.owner])


def run_source(bench, store, run_id: str):
    """A coefficient source running run ``run_id``'s merged update."""
    from ..merged import MergedSource, run_merge

    return MergedSource(run_merge(store, run_id, bench.adapters), bench.device)


# ----------------------------------------------------------------------------- divergence


@torch.no_grad()
def cross_expert_probs(bench, i: int, split: str = "evaluation", limit: int | None = None,
                       max_rows: int = 256) -> list[torch.Tensor]:
    """Every expert j's label probabilities (n_i, C_i) on task i's inputs, with task i's head.

    One routed forward per chunk: task i's rows repeated K times, copy j routed to expert j.
    """
    K, enc = bench.num_tasks, bench.encoded(i, split, limit)
    chunk = max(1, max_rows // K)
    outs: list[list[torch.Tensor]] = [[] for _ in range(K)]
    for start in range(0, len(enc), chunk):
        idx = torch.arange(start, min(start + chunk, len(enc)))
        segments, inputs = bench.reader.batch([(i, enc, idx)] * K, bench.device)
        bench.model.set_source(RowExperts(torch.arange(K).repeat_interleave(len(idx)), K))
        for j, logits in enumerate(bench.reader.label_logits(bench.model, segments, inputs)):
            outs[j].append(torch.softmax(logits, -1).cpu())
    return [torch.cat(o) for o in outs]


def divergence_of(bench, split: str = "evaluation", limit: int | None = None, max_rows: int = 256) -> dict:
    """D_{X_i}(theta_i || theta_j) for JS and KL (DivMerge Fig. 5), the cross-task score matrix
    S[i, j] (metric of expert j on task i) and their Spearman correlations (DivMerge Table 2:
    divergence vs score drop S[i, i] - S[i, j])."""
    names = bench.tasks.names
    probs, S = {}, torch.zeros(len(names), len(names), dtype=torch.float64)
    for i, task in enumerate(bench.tasks):
        per_expert = cross_expert_probs(bench, i, split, limit, max_rows)
        probs[i] = dict(enumerate(per_expert))
        gold = np.asarray(getattr(task, split).labels[: len(per_expert[0])])
        for j, p in enumerate(per_expert):
            S[i, j] = score(task.metric, predictions(task, p), gold)
    drop = torch.diagonal(S)[:, None] - S
    out = {"tasks": names, "scores": _matrix(S)}
    for kind in ("js", "kl"):
        D = divergence_matrix(probs, kind)
        out[kind] = _matrix(D)
        out[f"spearman_{kind}"] = spearman_with_scores(D, drop)
        out[f"spearman_{kind}_rows"] = [float(x) for x in spearman_with_scores(D, -S, per_row=True)]
    return out


def divergence_lens(bench, store=None, params: LensParams = LensParams()) -> dict:
    """Divergence lens of the workbench's experts (no run needed), on the evaluation split."""
    return cached(store, lens_key(bench, "divergence", None, params),
                  lambda: divergence_of(bench, "evaluation", params.limit, params.max_rows))


# ----------------------------------------------------------------------------- representation


@torch.no_grad()
def hidden_states(bench, source, segments, inputs) -> tuple[torch.Tensor, ...]:
    """Encoder hidden states (embeddings + every layer) under ``source``, each (N, T, d)."""
    bench.model.set_source(source)
    return bench.model(segments, **inputs, output_hidden_states=True).hidden_states


def representation_of(bench, source, split: str = "evaluation", limit: int | None = None,
                      max_rows: int = 256) -> dict:
    """Representation bias of ``source`` vs each task's expert on the task's own inputs:
    mean over real tokens of the per-token mean |h_merged - h_expert|, per layer (LoRA-DV Fig. 2b)."""
    out = {"tasks": bench.tasks.names, "layers": [], "bias": {}, "mean": {}}
    for k, name in enumerate(bench.tasks.names):
        enc = bench.encoded(k, split, limit)
        total, tokens = None, 0.0
        for start in range(0, len(enc), max_rows):
            segments, inputs = bench.reader.batch([(k, enc, torch.arange(start, min(start + max_rows, len(enc))))],
                                                  bench.device)
            merged = hidden_states(bench, source, segments, inputs)
            expert = hidden_states(bench, bench.routing(), segments, inputs)
            n = float(inputs["attention_mask"].sum())
            bias = representation_bias([h.cpu() for h in merged], [h.cpu() for h in expert],
                                       inputs["attention_mask"].cpu()) * n
            total, tokens = (bias if total is None else total + bias), tokens + n
        per_layer = total / max(tokens, 1.0)
        out["bias"][name], out["mean"][name] = per_layer.tolist(), float(per_layer.mean())
    out["layers"] = ["embeddings"] + [f"layer {l}" for l in range(1, len(out["bias"][out["tasks"][0]]))]
    return out


def representation_lens(bench, store, run_id: str, params: LensParams = LensParams()) -> dict:
    return cached(store, lens_key(bench, "representation", run_id, params),
                  lambda: representation_of(bench, run_source(bench, store, run_id), "evaluation",
                                            params.limit, params.max_rows))


# ----------------------------------------------------------------------------- calibration


def _text(fields: tuple[str, ...]) -> str:
    return " | ".join(fields)


def calibration_of(bench, source, limit: int | None = None, n_bins: int = 10, threshold: float = 0.9) -> dict:
    """Confidence diagnostics of ``source`` against the experts on the evaluation split: per-task
    summary (ECE, confidently-wrong share, agreement with the expert, ...), reliability bins per
    task and pooled ("all"), and one row per example for the table and the histograms."""
    merged, expert = bench.predict(source, "evaluation", limit), bench.predict(bench.routing(), "evaluation", limit)
    out = {"tasks": bench.tasks.names, "summary": {}, "expert_summary": {}, "bins": {}, "examples": []}
    confs, oks = [], []
    for task, pm, pe in zip(bench.tasks, merged, expert):
        labels = torch.tensor(task.evaluation.labels[: len(pm)]).long()
        out["summary"][task.name] = confidence_summary(pm, labels, pe, threshold, n_bins)
        out["expert_summary"][task.name] = confidence_summary(pe, labels, None, threshold, n_bins)
        conf, pred = pm.double().max(-1)
        econf, epred = pe.double().max(-1)
        out["bins"][task.name] = _bins(conf, pred == labels, n_bins)
        confs.append(conf), oks.append(pred == labels)
        for n in range(len(pm)):
            out["examples"].append({
                "task": task.name, "index": n, "text": _text(task.evaluation.inputs[n]),
                "label": task.label_names[labels[n]], "expert_pred": task.label_names[epred[n]],
                "expert_conf": float(econf[n]), "merged_pred": task.label_names[pred[n]],
                "merged_conf": float(conf[n]), "correct": bool(pred[n] == labels[n]),
                "agree": bool(pred[n] == epred[n])})
    conf, ok = torch.cat(confs), torch.cat(oks)
    out["bins"]["all"] = _bins(conf, ok, n_bins)
    out["overall"] = {"ece": expected_calibration_error(conf, ok, n_bins),
                      "confidently_wrong": confidently_wrong_share(conf, ok, threshold),
                      "agreement": float(np.mean([e["agree"] for e in out["examples"]])),
                      "accuracy": float(ok.double().mean()), "mean_confidence": float(conf.mean())}
    return out


def _bins(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> dict:
    b = reliability_bins(conf, correct, n_bins)
    return {"edges": b.edges.tolist(), "count": b.count.tolist(), "confidence": b.confidence.tolist(),
            "accuracy": b.accuracy.tolist(), "ece": expected_calibration_error(conf, correct, n_bins)}


def calibration_lens(bench, store, run_id: str, params: LensParams = LensParams()) -> dict:
    return cached(store, lens_key(bench, "calibration", run_id, params),
                  lambda: calibration_of(bench, run_source(bench, store, run_id), params.limit,
                                         params.n_bins, params.threshold))


def sort_examples(examples: list[dict]) -> list[dict]:
    """'Merged confident, expert disagrees' first: disagreements by merged confidence, then the rest."""
    return sorted(examples, key=lambda e: (e["agree"], -e["merged_conf"]))
