"""Export a merged run as a standard PEFT LoRA adapter folder (or full merged weights) + a merge card.

    run = load_run("20250101-...", store, bench.adapters)      # or a run folder (run.json + tensors)
    result = export_run(bench, run, "out/merged", ExportParams(mode="exact"))

Modes:
    exact       the run's merged update as it is: rank = sum of source ranks per module, the
                coefficients folded into B (delta = B @ A), scale 1 (lora_alpha == r, per module
                through PEFT's rank_pattern / alpha_pattern). Factored runs only.
    compressed  any rank r by a truncated SVD through thin QR of the factors (a small core SVD,
                never a dense out x in SVD); dense-only runs (TIES, DARE) are SVD'd densely.
                Reports retained energy per module and the largest change of the merged model's
                label probabilities on the calibration inputs (label tasks only: generative tasks have
                none and are named in the report's ``left_out``).
    full        base weights + merged delta, ``save_pretrained`` of the whole model (the
                ``merge_and_unload`` equivalent) in the base's own class: a classifier with the
                chosen task's head, a seq2seq LM or a causal LM (with its lm_head); and the tokenizer.

Classifier families: every task's head goes to ``heads/<task>.safetensors``; the adapter itself carries
the chosen task's head as ``modules_to_save`` so plain ``PeftModel.from_pretrained`` loads it. Seq2seq and
causal LMs have no heads (the card's snippet loads them with their own Auto class).
Writes are atomic (temporary folder next to the target, then rename) and never replace an existing
non-empty target unless ``overwrite=True`` and mergecore wrote it (``files.check_target``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mergecore.export.card import card_readme, loading_snippet, merge_card
from mergecore.export.full import base_name, full_model
from mergecore.export.params import ExportInputs, ExportParams, ExportResult
from mergecore.export.peft import (
    CARD_FILE,
    README_FILE,
    compress,
    exact_factors,
    factors_to_merge,
    head_files,
    pick_head,
    task_heads,
    write_adapter,
)
from mergecore.files import atomic_folder, check_target, inside, save_tensors, sha256_file
from mergecore.forward.workbench import Workbench
from mergecore.merged import Merge, MergedSource
from mergecore.numbers import dumps
from mergecore.runs.folder import RunSource, check_run_adapters, run_inputs


def probability_change(bench: Workbench | ExportInputs, full: Merge, approx: Merge, samples: int) -> dict:
    """Largest |p_full - p_approx| over the calibration inputs, per label task and overall.

    Generative tasks have no label probabilities: they are left out and named in ``left_out``."""
    left_out = [t.name for t in bench.tasks if t.generative]
    if len(left_out) == bench.num_tasks:
        return {"per_task": {}, "max": None, "samples": samples, "left_out": left_out}
    p_full = bench.predict(MergedSource(full, bench.device), "calibration", limit=samples)
    p_approx = bench.predict(MergedSource(approx, bench.device), "calibration", limit=samples)
    per_task = {t: float((a - b).abs().max()) for t, a, b in zip(bench.tasks.names, p_full, p_approx)
                if a is not None}  # generative tasks: None in both
    return {"per_task": per_task, "max": max(per_task.values()), "samples": samples, "left_out": left_out}


def prepare(bench: Workbench | ExportInputs, run: RunSource, params: ExportParams) -> tuple[dict | None, dict]:
    """Factors to write (None for full weights) and the report (energy, probability change)."""
    if params.mode == "exact":
        return exact_factors(run.merge), {}
    if params.mode == "full":
        return None, {}
    factors, energy = compress(run.merge, params.rank)
    change = probability_change(bench, run.merge, factors_to_merge(factors), params.samples)
    return factors, {"energy": energy, "probability_change": change}


def export_run(bench: Workbench | ExportInputs, run: RunSource, out: str | Path, params: ExportParams = ExportParams(),
               protect=()) -> ExportResult:
    """Write the run as a PEFT adapter folder (or full weights) + heads + merge card, atomically. An existing
    non-empty ``out`` is replaced only with ``overwrite`` and only when mergecore wrote it; never the loaded
    adapters' folders, the run's task files or ``protect`` (``files.check_target``)."""
    params = params.validate()
    protect = [*protect, *run_inputs(None, [a.source for a in bench.adapters.adapters], run.config.get("task_source"))]
    check_target(out, params.overwrite, protect)
    check_run_adapters(run.config, bench.adapters, run.id)
    head = pick_head(bench, params.head)
    heads = task_heads(bench)
    files = {t: f for t, f in head_files(bench.tasks.names).items() if heads[t]}
    factors, report = prepare(bench, run, params)
    ranks = {n: int(A.shape[0]) for n, (_, A) in (factors or {}).items()}
    card = merge_card(bench, run, params, head, files, ranks, report)
    with atomic_folder(out, params.overwrite, protect) as tmp:
        if factors is None:
            model, tokenizer = full_model(bench, run.merge, head, heads[head])
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        else:
            write_adapter(tmp, bench.adapters, factors, heads[head], base_name(bench))
        _write_heads(tmp, heads, files, bench)
        card["snippet"] = loading_snippet(card, Path(out).name)
        card["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / CARD_FILE).write_text(dumps(card, indent=2))  # NaN scores -> null
        (tmp / README_FILE).write_text(card_readme(card, Path(out).name))
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return ExportResult(Path(out).expanduser().resolve(), card, written)


def _write_heads(folder: Path, heads: dict[str, dict[str, torch.Tensor]], files: dict[str, str], bench) -> None:
    for task, tensors in heads.items():
        if task in files:
            labels = bench.tasks.by_name(task).label_names
            save_tensors(inside(folder, files[task]), tensors,
                         {"task": task, "num_labels": str(len(labels)), "labels": json.dumps(list(labels))})
