"""Lenses that run the model: divergence matrix, representation bias, confidence diagnostics.

All of them compare a model with the experts on the experts' own tasks and run in the
Workbench's MergeModel (factored forward; experts via per-row routing). Cached like the
static lenses (see ``lenses.py``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from mergecore.analysis.calibration import (
    confidence_summary,
    confidently_wrong_share,
    expected_calibration_error,
    reliability_bins,
)
from mergecore.analysis.divergence import mean_divergence, spearman_with_scores
from mergecore.analysis.lenses import LensParams, _matrix, cached, lens_key
from mergecore.analysis.representation import representation_bias
from mergecore.data.metrics import score
from mergecore.errors import MergecoreError
from mergecore.forward.evaluate import predictions
from mergecore.forward.generative import generate_texts, rouge1
from mergecore.forward.verbalizer import accepts
from mergecore.forward.workbench import Workbench
from mergecore.merged import MergedSource
from mergecore.runs.folder import run_merge
from mergecore.runs.store import Store


def run_source(bench: Workbench, store: Store, run_id: str):
    """A coefficient source running run ``run_id``'s merged update."""
    return MergedSource(run_merge(store, run_id, bench.adapters), bench.device)


def generative_note(task) -> dict:
    return {"task": task.name, "reason": "generative task: no label distribution to read (left out)"}


def label_tasks_or_refuse(bench: Workbench, lens: str) -> list[int]:
    """The label tasks of the bench; a one-line refusal when every task is generative."""
    if not bench.label_tasks:
        raise MergecoreError(f"--what {lens} reads label distributions but every task is generative; "
                             "add a label task or use --what divergence / spectra")
    return bench.label_tasks


# ----------------------------------------------------------------------------- divergence


@torch.no_grad()
def cross_expert_probs(bench: Workbench, i: int, split: str = "evaluation", limit: int | None = None,
                       max_rows: int = 256) -> list[torch.Tensor]:
    """Every expert j's label probabilities (n_i, C_i) on label task i's inputs, with task i's head
    (classifier) or task i's verbalizers (seq2seq / causal: one distribution per example over the
    task's labels, whatever the reader's internal (example x label) rows).

    Each chunk of task i is batched once; expert j runs it with one-hot coefficients (K forwards
    of n rows: the same work as one routed forward of K * n rows, and valid for every reader)."""
    K, enc = bench.num_tasks, bench.encoded(i, split, limit)
    outs: list[list[torch.Tensor]] = [[] for _ in range(K)]
    for start in range(0, len(enc), max(1, max_rows)):
        idx = torch.arange(start, min(start + max_rows, len(enc)))
        segments, inputs = bench.reader.batch([(i, enc, idx)], bench.device)
        for j in range(K):
            bench.model.set_source(bench.expert(j))
            (logits,) = bench.reader.label_logits(bench.model, segments, inputs)
            outs[j].append(torch.softmax(logits.float(), -1).cpu())
    return [torch.cat(o) for o in outs]


@torch.no_grad()
def generative_cross(bench: Workbench, i: int, split: str = "evaluation", limit: int | None = None,
                     max_rows: int = 256) -> dict:
    """Generative task i (DivMerge App. B.1): expert i decodes greedily on task i's inputs; every
    expert j is teacher-forced on that output. D[kind][j] = mean over inputs of the per-token
    divergence (bucketed top-k, ``bench.gen_params``); score[j] = ROUGE-1 of expert j's own greedy
    outputs against the references (NaN without references)."""
    task, gp, gen = bench.tasks[i], bench.gen_params, bench.generator
    inputs = getattr(task, split).inputs[:limit]
    prompts = [task.render(f) for f in inputs]
    cache = gen.expert_outputs(i, prompts, gp)  # routes every row to expert i
    refs = list(task.references[: len(prompts)]) if split == "evaluation" else []
    out = {"js": [], "kl": [], "score": []}
    for j in range(bench.num_tasks):
        source = bench.expert(j)
        for kind in ("js", "kl"):
            total = 0.0
            for start in range(0, len(cache), max(1, max_rows)):
                bench.model.set_source(source)
                idx = torch.arange(start, min(start + max_rows, len(cache)))
                total += float(gen.divergence(i, cache, idx, replace(gp, divergence=kind)).double().sum())
            out[kind].append(0.0 if j == i else total / len(cache))
        if refs:
            bench.model.set_source(source)
            out["score"].append(rouge1(generate_texts(gen, i, prompts, gp.max_new_tokens), refs))
        else:
            out["score"].append(math.nan)
    return out


def divergence_of(bench: Workbench, split: str = "evaluation", limit: int | None = None, max_rows: int = 256) -> dict:
    """D_{X_i}(theta_i || theta_j) for JS and KL (DivMerge Fig. 5), the cross-task score matrix
    S[i, j] (metric of expert j on task i) and their Spearman correlations (DivMerge Table 2:
    divergence vs score drop S[i, i] - S[i, j]).

    Label tasks: mean over task i's inputs of D(p_i(x) || p_j(x)) on the label distributions.
    Generative tasks: token-level divergence on expert i's greedy outputs (``generative_cross``);
    their scores are ROUGE-1 (NaN without references). ``generative`` lists those tasks."""
    names, K = bench.tasks.names, bench.num_tasks
    S = torch.full((K, K), math.nan, dtype=torch.float64)
    D = {kind: torch.full((K, K), math.nan, dtype=torch.float64) for kind in ("js", "kl")}
    for i, task in enumerate(bench.tasks):
        if task.generative:
            row = generative_cross(bench, i, split, limit, max_rows)
            for kind in D:
                D[kind][i] = torch.tensor(row[kind], dtype=torch.float64)
            S[i] = torch.tensor(row["score"], dtype=torch.float64)
            continue
        per_expert = cross_expert_probs(bench, i, split, limit, max_rows)
        gold = np.asarray(getattr(task, split).labels[: len(per_expert[0])])
        for j, p in enumerate(per_expert):
            S[i, j] = score(task.metric, predictions(task, p), gold)
            for kind in D:
                D[kind][i, j] = 0.0 if j == i else mean_divergence(per_expert[i], p, kind)
    drop = torch.diagonal(S)[:, None] - S
    out = {"tasks": names, "scores": _matrix(S), "generative": [t.name for t in bench.tasks if t.generative]}
    for kind in ("js", "kl"):
        out[kind] = _matrix(D[kind])
        out[f"spearman_{kind}"] = spearman_with_scores(D[kind], drop)
        out[f"spearman_{kind}_rows"] = [float(x) for x in spearman_with_scores(D[kind], -S, per_row=True)]
    return out


def divergence_lens(bench: Workbench, store: Store | None = None, params: LensParams = LensParams()) -> dict:
    """Divergence lens of the workbench's experts (no run needed), on the evaluation split."""
    return cached(store, lens_key(bench, "divergence", None, params),
                  lambda: divergence_of(bench, "evaluation", params.limit, params.max_rows))


# ----------------------------------------------------------------------------- representation


@torch.no_grad()
def state_groups(bench: Workbench, source, segments, inputs) -> list[tuple[str, tuple[torch.Tensor, ...], torch.Tensor]]:
    """Hidden states under ``source`` as [(group, states (embeddings + every layer, each (N, T, d)),
    mask (N, T))]: one group ("") for encoders and decoder-only LMs; "encoder" and "decoder" for
    seq2seq models (their outputs carry encoder_hidden_states / decoder_hidden_states)."""
    extra = {"logits_to_keep": 1} if bench.reader.family == "causal" and accepts(bench.model.model, "logits_to_keep") else {}
    bench.model.set_source(source)
    out = bench.model(segments, **inputs, **extra, output_hidden_states=True)
    if getattr(out, "encoder_hidden_states", None) is not None:
        dec = out.decoder_hidden_states
        dmask = inputs.get("decoder_attention_mask")
        if dmask is None:
            dmask = torch.ones(dec[0].shape[:2], dtype=torch.long, device=dec[0].device)
        return [("encoder", out.encoder_hidden_states, inputs["attention_mask"]), ("decoder", dec, dmask)]
    if getattr(out, "hidden_states", None) is None:
        raise MergecoreError(f"the {type(out).__name__} output carries no hidden states; representation bias "
                             "needs a model that returns them with output_hidden_states=True")
    return [("", out.hidden_states, inputs["attention_mask"])]


def hidden_states(bench: Workbench, source, segments, inputs) -> tuple[torch.Tensor, ...]:
    """Hidden states (embeddings + every layer) under ``source``, each (N, T, d); seq2seq: the
    encoder's then the decoder's."""
    return tuple(h for _, states, _ in state_groups(bench, source, segments, inputs) for h in states)


def representation_of(bench: Workbench, source, split: str = "evaluation", limit: int | None = None,
                      max_rows: int = 256) -> dict:
    """Representation bias of ``source`` vs each label task's expert on the task's own inputs:
    mean over real tokens of the per-token mean |h_merged - h_expert|, per layer (LoRA-DV Fig. 2b).
    Seq2seq: encoder layers over the prompt's tokens, then decoder layers (the example-level forward
    feeds the decoder its start token). Generative tasks are left out (``skipped``)."""
    out = {"tasks": [], "layers": [], "bias": {}, "mean": {},
           "skipped": [generative_note(t) for t in bench.tasks if t.generative]}
    for k in label_tasks_or_refuse(bench, "representation"):
        name, enc = bench.tasks[k].name, bench.encoded(k, split, limit)
        totals: dict = {}  # group -> [sum over chunks of per-layer bias * tokens, tokens]
        for start in range(0, len(enc), max(1, max_rows)):
            segments, inputs = bench.reader.batch([(k, enc, torch.arange(start, min(start + max_rows, len(enc))))],
                                                  bench.device)
            merged = state_groups(bench, source, segments, inputs)
            expert = state_groups(bench, bench.routing(), segments, inputs)
            for (group, hm, mask), (_, he, _) in zip(merged, expert):
                n = float(mask.sum())
                bias = representation_bias([h.cpu() for h in hm], [h.cpu() for h in he], mask.cpu()) * n
                acc = totals.setdefault(group, [torch.zeros_like(bias), 0.0])
                acc[0], acc[1] = acc[0] + bias, acc[1] + n
        per_layer = torch.cat([t / max(n, 1.0) for t, n in totals.values()])
        out["tasks"].append(name)
        out["bias"][name], out["mean"][name] = per_layer.tolist(), float(per_layer.mean())
        out["layers"] = [f"{g} {label}".strip() for g, (t, _) in totals.items()
                         for label in ["embeddings"] + [f"layer {l}" for l in range(1, len(t))]]
    return out


def representation_lens(bench: Workbench, store: Store, run_id: str, params: LensParams = LensParams()) -> dict:
    return cached(store, lens_key(bench, "representation", run_id, params),
                  lambda: representation_of(bench, run_source(bench, store, run_id), "evaluation",
                                            params.limit, params.max_rows))


# ----------------------------------------------------------------------------- calibration


def _text(fields: tuple[str, ...]) -> str:
    return " | ".join(fields)


def calibration_of(bench: Workbench, source, limit: int | None = None, n_bins: int = 10, threshold: float = 0.9) -> dict:
    """Confidence diagnostics of ``source`` against the experts on the evaluation split: per-task
    summary (ECE, confidently-wrong share, agreement with the expert, ...), reliability bins per
    task and pooled ("all"), and one row per example for the table and the histograms.

    "Correct" = the predicted label (bin) is the gold one; regression targets are first mapped to
    their nearest bin (``Task.class_ids``). Generative tasks are left out (``skipped``)."""
    label_tasks_or_refuse(bench, "calibration")
    merged, expert = bench.predict(source, "evaluation", limit), bench.predict(bench.routing(), "evaluation", limit)
    out = {"tasks": [], "summary": {}, "expert_summary": {}, "bins": {}, "examples": [],
           "skipped": [generative_note(t) for t in bench.tasks if t.generative]}
    confs, oks = [], []
    for task, pm, pe in zip(bench.tasks, merged, expert):
        if pm is None:  # generative
            continue
        out["tasks"].append(task.name)
        labels = task.class_ids(task.evaluation.labels[: len(pm)])
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


def calibration_lens(bench: Workbench, store: Store, run_id: str, params: LensParams = LensParams()) -> dict:
    return cached(store, lens_key(bench, "calibration", run_id, params),
                  lambda: calibration_of(bench, run_source(bench, store, run_id), params.limit,
                                         params.n_bins, params.threshold))


def sort_examples(examples: list[dict]) -> list[dict]:
    """'Merged confident, expert disagrees' first: disagreements by merged confidence, then the rest."""
    return sorted(examples, key=lambda e: (e["agree"], -e["merged_conf"]))
