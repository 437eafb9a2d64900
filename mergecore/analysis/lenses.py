"""Lenses: the analysis functions applied to a Workbench and a stored run, cached in the RunStore.

Each lens returns a JSON-ready dict (lists, floats, strings) so the CLI writes it as is and the
app's pages only reshape it. Results are cached under ``lens:<lens>:<run>:<hash>`` where the hash
covers the workbench (adapter and task fingerprints) and the lens parameters: runs never change
once finished, so a page opens instantly the second time.

    spectra_lens          singular values of each task's delta and a run's merged delta per module
    subspaces_lens        B / A overlap, task-vector cosine, shared B directions, OSRM interference
    divergence_lens       D_{X_i}(theta_i || theta_j) (JS and KL), cross-task scores, Spearman
    representation_lens   mean L1 of hidden states, merged vs expert, per task and layer
    calibration_lens      reliability bins, ECE, confidently-wrong, agreement, example table

The forward-pass lenses (divergence, representation, calibration) live in ``forward_lenses.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from mergecore.analysis.spectra import effective_rank, energy_at_rank, lora_singular_values
from mergecore.analysis.subspaces import (
    a_overlap_matrix,
    b_overlap_matrix,
    osrm_interference_matrix,
    shared_output_directions,
    task_vector_cosine,
)
from mergecore.errors import MergecoreError
from mergecore.fields import check_number, param
from mergecore.forward.coefs import block_index
from mergecore.forward.features import collect_features
from mergecore.forward.spec import bench_key
from mergecore.forward.workbench import Workbench
from mergecore.runs.folder import run_merge
from mergecore.runs.store import Store
from mergecore.merges.base import ModuleMerge, numerical_rank, singular_values

LENS_VERSION = 2  # bump when a lens's output changes: cached results of older code are not served


@dataclass(frozen=True)
class LensParams:
    """Parameters shared by the lenses (each lens reads the fields it needs)."""

    limit: int = param(100, "Evaluation examples per task", "evaluation examples per task for forward-pass lenses")
    energy_rank: int = param(0, "Rank of the energy captured", "rank r for 'energy captured at rank r'; 0 = the "
                             "module's largest adapter rank")
    samples: int = param(64, "Calibration examples per task", "calibration examples per task for OSRM features")
    shared_threshold: float = param(2.0, "Tasks sharing a direction", "a B direction is shared when >= this many "
                                    "tasks contain it (Pico)")
    n_bins: int = param(10, "Reliability bins", "confidence bins of the reliability diagram")
    threshold: float = param(0.9, "Confidently-wrong threshold", "confidence at or above which a wrong prediction is "
                             "'confidently wrong'")
    max_rows: int = param(256, "Rows per forward pass", "rows per forward pass")

    def validate(self) -> "LensParams":
        """One line for the first bad field (its flag and range); ``analyze`` runs it before loading anything
        (the app's pages use the defaults)."""
        for name in ("limit", "samples", "n_bins", "max_rows"):
            check_number(name, getattr(self, name), "--" + name.replace("_", "-"), 1, whole=True)
        check_number("energy_rank", self.energy_rank, "--energy-rank", 0, whole=True)  # 0 = the largest rank
        check_number("shared_threshold", self.shared_threshold, "--shared-threshold", 1)
        check_number("threshold", self.threshold, "--threshold", 0, 1)
        return self


# ----------------------------------------------------------------------------- caching


def lens_key(bench: Workbench, lens: str, run_id: str | None, params: LensParams) -> str:
    payload = json.dumps({"bench": bench_key(bench), "params": asdict(params), "version": LENS_VERSION}, sort_keys=True)
    return f"lens:{lens}:{run_id or '-'}:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def cached(store: Store | None, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()`` once per key and store (JSON, NaN allowed); without a store just compute."""
    hit = store.cache_get(key) if store is not None else None
    if hit is not None:
        return json.loads(hit)
    out = compute()
    if store is not None:
        store.cache_put(key, json.dumps(out).encode())
    return out


# ----------------------------------------------------------------------------- spectra


def block_labels(modules: list[str]) -> list[str]:
    """Transformer block of each module as a short label ('bert.encoder.layer.3.x' -> 'encoder 3')."""
    group, names = block_index(modules)
    labels = []
    for name in names:
        prefix, _, num = name.rpartition(".")
        labels.append(f"{prefix.rstrip('.').split('.')[-1]} {num}".strip() if num.isdigit() else name)
    return [labels[g] for g in group.tolist()]


def _spectrum_row(module: str, block: str, model: str, kind: str, s: torch.Tensor, r: int) -> dict:
    return {"module": module, "block": block, "model": model, "kind": kind,
            "effective_rank": effective_rank(s), "energy_at_r": energy_at_rank(s, r), "r": r,
            "top": float(s.max()) if s.numel() else 0.0, "rank": numerical_rank(s)}


def spectra_of(adapters, merge: dict[str, ModuleMerge] | None = None, label: str = "run",
               energy_rank: int = 0, spectral: dict[str, torch.Tensor] | None = None) -> dict:
    """Spectra of every task's delta (and of ``merge``) on every module, with a summary row each.

    Returns {"modules", "blocks", "tasks", "spectra": {module: {model: [s...]}}, "rows": [...],
    "spectral": {module: {"scale": [...], "sigma": [...]}}}; ``spectral`` holds a LoRA-DV run's
    tensors "scale::<module>" (learned gain per singular value) and "sigma::<module>".
    """
    out = {"modules": list(adapters.modules), "blocks": block_labels(adapters.modules),
           "tasks": list(adapters.names), "spectra": {}, "rows": [], "spectral": {}}
    for module, block in zip(out["modules"], out["blocks"]):
        factors = adapters.factors(module)
        r = energy_rank or max((f.rank for f in factors if f is not None), default=1)
        spectra = {}
        for name, f in zip(adapters.names, factors):
            if f is not None:
                spectra[name] = lora_singular_values(f.B, f.A, f.scale)
                out["rows"].append(_spectrum_row(module, block, name, "task", spectra[name], r))
        if spectral is not None and f"sigma::{module}" in spectral:
            sigma, scale = spectral[f"sigma::{module}"].double(), spectral[f"scale::{module}"].double()
            out["spectral"][module] = {"sigma": sigma.tolist(), "scale": scale.tolist()}
            if merge is None or module not in merge:  # the run's merged spectrum is sigma * |scale|
                spectra[label] = torch.sort((sigma * scale).abs(), descending=True).values
        if merge is not None and module in merge:
            spectra[label] = singular_values(merge[module])
        if label in spectra:
            out["rows"].append(_spectrum_row(module, block, label, "run", spectra[label], r))
        out["spectra"][module] = {k: v.tolist() for k, v in spectra.items()}
    return out


def spectra_lens(bench: Workbench, store: Store | None = None, run_id: str | None = None, params: LensParams = LensParams()) -> dict:
    """Task spectra, plus run ``run_id``'s merged spectrum (and LoRA-DV scales) when given."""
    def compute() -> dict:
        if run_id is None:
            return spectra_of(bench.adapters, energy_rank=params.energy_rank)
        names = store.artifacts(run_id)
        spectral = store.get_tensors(run_id, "spectral") if "spectral" in names else None
        merge = run_merge(store, run_id, bench.adapters) if spectral is None or "merged" in names or "coefs" in names else None
        return spectra_of(bench.adapters, merge, store.get(run_id).label, params.energy_rank, spectral)

    return cached(store, lens_key(bench, "spectra", run_id, params), compute)


# ----------------------------------------------------------------------------- subspaces


def _matrix(M: torch.Tensor) -> list:
    return [[float(x) for x in row] for row in M.tolist()]


def subspaces_of(adapters, features: dict | None = None, threshold: float = 2.0, skipped: list | None = None) -> dict:
    """Per module K x K: B-space and A-space overlap (mean cos^2 of principal angles), task-vector
    cosine, OSRM interference per example I[i, j] = ||s_j B_j A_j H_i^T||_F / sqrt(n_i) (adapter j
    on task i's features H_i, one row per example), and the share counts of Pico's shared output
    directions. A task without features (generative: ``skipped``) has a NaN interference row.
    ``summary`` holds each matrix's mean off-diagonal value over the modules where it is defined."""
    out = {"modules": list(adapters.modules), "blocks": block_labels(adapters.modules),
           "tasks": list(adapters.names), "b_overlap": {}, "a_overlap": {}, "cosine": {},
           "interference": {}, "shared": {}, "skipped": list(skipped or [])}
    for module in adapters.modules:
        factors = adapters.factors(module)
        out["b_overlap"][module] = _matrix(b_overlap_matrix(factors))
        out["a_overlap"][module] = _matrix(a_overlap_matrix(factors))
        out["cosine"][module] = _matrix(task_vector_cosine(factors))
        _, counts = shared_output_directions(factors, threshold)
        out["shared"][module] = counts.tolist()
        if features is not None and module in features:
            hidden = [features[module].get(i) for i in range(len(factors))]
            M = osrm_interference_matrix(factors, hidden)
            n = torch.tensor([math.nan if h is None else len(h) for h in hidden], dtype=torch.float64)
            out["interference"][module] = _matrix(M / n.clamp_min(1.0).sqrt()[:, None])
    out["summary"] = {key: offdiag_summary(out[key], out["modules"])
                      for key in ("b_overlap", "a_overlap", "cosine", "interference")}
    return out


def subspaces_lens(bench: Workbench, store: Store | None = None, params: LensParams = LensParams()) -> dict:
    """Subspace lens of the workbench's adapters (no run needed), OSRM features included
    (label tasks only: a generative task's interference row is NaN and it is listed in ``skipped``)."""
    skipped = [{"task": t.name, "reason": "generative task: no OSRM features collected (interference row left out)"}
               for t in bench.tasks if t.generative]
    return cached(store, lens_key(bench, "subspaces", None, params),
                  lambda: subspaces_of(bench.adapters, collect_features(bench, params.samples, params.max_rows),
                                       params.shared_threshold, skipped))


def offdiag_summary(matrices: dict[str, list], modules: list[str]) -> dict:
    """Mean off-diagonal value of K x K matrices over ``modules``, skipping what is undefined.

    Per module: the mean of its finite off-diagonal entries (undefined when it has none: absent
    adapters, no features, K = 1). Returns {"mean": mean over the defined modules (NaN if none),
    "defined": count, "total": modules looked at, "undefined": total - defined}."""
    values = []
    total = 0
    for m in modules:
        if m not in matrices:
            continue
        total += 1
        M = torch.tensor(matrices[m], dtype=torch.float64)
        off = M[~torch.eye(len(M), dtype=torch.bool)] if M.numel() else M.reshape(-1)
        off = off[torch.isfinite(off)]
        if off.numel():
            values.append(float(off.mean()))
    return {"mean": sum(values) / len(values) if values else math.nan, "defined": len(values),
            "total": total, "undefined": total - len(values)}


def describe_mean(summary: dict, what: str = "modules") -> str:
    """'0.123 (mean over 10 of 12 modules; 2 undefined)' or 'undefined (0 of 12 modules defined)'."""
    if not summary["defined"]:
        return f"undefined (0 of {summary['total']} {what} defined)"
    tail = f"; {summary['undefined']} undefined" if summary["undefined"] else ""
    return f"{summary['mean']:.3f} (mean over {summary['defined']} of {summary['total']} {what}{tail})"


@torch.no_grad()
def aggregate(matrices: dict[str, list], modules: list[str]) -> list:
    """Mean K x K matrix over ``modules`` ignoring NaN (absent adapters); NaN where none is present."""
    stack = torch.tensor([matrices[m] for m in modules if m in matrices], dtype=torch.float64)
    if stack.numel() == 0:
        raise MergecoreError("no module selected; pick at least one module or layer")
    return _matrix(stack.nanmean(0))
