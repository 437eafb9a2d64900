"""The lenses, one table: what each one computes, whether it needs a run, its flat CSV tables and its
one-line summary. The CLI's ``analyze`` and the app's pages look a lens up here by name; nothing else
dispatches on a lens name.

    spectra         singular values of each task's delta and of a run's merged delta, per module
    subspaces       B / A overlap, task-vector cosine, shared B directions, OSRM interference
    divergence      D_{X_i}(theta_i || theta_j) (JS and KL) between experts, cross-task scores, Spearman
    representation  mean L1 of hidden states, merged vs expert, per task and layer (needs a run)
    calibration     reliability bins, ECE, confidently-wrong share, agreement (needs a run)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from mergecore.analysis import forward_lenses as fl
from mergecore.analysis import lenses
from mergecore.analysis.lenses import LensParams, describe_mean, offdiag_summary
from mergecore.errors import MergecoreError
from mergecore.forward.workbench import Workbench
from mergecore.runs.store import Store

Rows = list[dict]


@dataclass(frozen=True)
class Lens:
    name: str
    needs_run: bool  # compares a run with its experts (representation, calibration)
    compute: Callable[..., dict]  # (bench, store, run_id, params) -> JSON-ready dict
    tables: Callable[[dict], dict[str, Rows]]  # lens -> {CSV file stem: rows}
    headline: Callable[[dict], str]  # lens -> one line


def _num(x, digits: int = 3) -> str:
    """A figure, or 'undefined' for NaN / None (e.g. a Spearman over fewer than 3 finite pairs)."""
    return "undefined" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------- spectra


def _spectra_tables(lens: dict) -> dict[str, Rows]:
    values = [{"module": m, "model": who, "index": n, "singular_value": s}
              for m, per in lens["spectra"].items() for who, sv in per.items() for n, s in enumerate(sv)]
    return {"spectra_summary": lens["rows"], "spectra_values": values}


def _spectra_headline(lens: dict) -> str:
    runs = [r for r in lens["rows"] if r["kind"] == "run"] or lens["rows"]
    mean = sum(r["effective_rank"] for r in runs) / max(len(runs), 1)
    return f"spectra of {len(lens['modules'])} modules; mean effective rank ({runs[0]['kind'] if runs else '-'}) {mean:.2f}"


# ----------------------------------------------------------------------------- subspaces


def _subspaces_tables(lens: dict) -> dict[str, Rows]:
    tasks = lens.get("tasks", [])
    return {"subspaces": [{"module": m, "lens": key, "task_i": tasks[i], "task_j": tasks[j], "value": v}
                          for key in ("b_overlap", "a_overlap", "cosine", "interference")
                          for m, M in lens[key].items() for i, row in enumerate(M) for j, v in enumerate(row)]}


def _subspaces_headline(lens: dict) -> str:
    summary = lens.get("summary") or {k: offdiag_summary(lens[k], lens["modules"])
                                      for k in ("b_overlap", "a_overlap", "interference")}
    text = (f"mean off-diagonal overlap: B spaces {describe_mean(summary['b_overlap'])}, "
            f"A spaces {describe_mean(summary['a_overlap'])}")
    if summary["interference"]["total"]:
        text += f"; OSRM interference {describe_mean(summary['interference'])}"
    return text


# ----------------------------------------------------------------------------- divergence, representation, calibration


def _divergence_tables(lens: dict) -> dict[str, Rows]:
    tasks = lens.get("tasks", [])
    return {"divergence": [{"task_i": ti, "model_j": tj, "js": lens["js"][i][j], "kl": lens["kl"][i][j],
                            "score": lens["scores"][i][j]} for i, ti in enumerate(tasks) for j, tj in enumerate(tasks)]}


def _representation_tables(lens: dict) -> dict[str, Rows]:
    return {"representation": [{"task": t, "layer": layer, "bias": b} for t in lens.get("tasks", [])
                               for layer, b in zip(lens["layers"], lens["bias"][t])]}


def _calibration_tables(lens: dict) -> dict[str, Rows]:
    summary = [{"task": t, **lens["summary"][t],
                **{f"expert_{k}": v for k, v in lens["expert_summary"][t].items() if k != "agreement"}}
               for t in lens.get("tasks", [])]
    return {"calibration_summary": summary, "calibration_examples": lens["examples"]}


def _calibration_headline(lens: dict) -> str:
    o = lens["overall"]
    return (f"ECE {_num(o['ece'])}, confidently wrong {_num(100 * o['confidently_wrong'], 1)}%, "
            f"agreement with the experts {_num(100 * o['agreement'], 1)}%, accuracy {_num(100 * o['accuracy'], 1)}%")


CATALOG: dict[str, Lens] = {lens.name: lens for lens in (
    Lens("spectra", False, lambda bench, store, run_id, p: lenses.spectra_lens(bench, store, run_id, p),
         _spectra_tables, _spectra_headline),
    Lens("subspaces", False, lambda bench, store, run_id, p: lenses.subspaces_lens(bench, store, p),
         _subspaces_tables, _subspaces_headline),
    Lens("divergence", False, lambda bench, store, run_id, p: fl.divergence_lens(bench, store, p), _divergence_tables,
         lambda lens: f"Spearman(divergence, score drop): JS {_num(lens['spearman_js'])}, KL {_num(lens['spearman_kl'])}"),
    Lens("representation", True, fl.representation_lens, _representation_tables,
         lambda lens: "representation bias (mean over layers): "
                      + ", ".join(f"{t} {_num(lens['mean'][t], 4)}" for t in lens.get("tasks", []))),
    Lens("calibration", True, fl.calibration_lens, _calibration_tables, _calibration_headline),
)}
LENSES = tuple(CATALOG)


def get_lens(name: str) -> Lens:
    if name not in CATALOG:
        raise MergecoreError(f"unknown lens {name!r}; valid: {', '.join(CATALOG)}")
    return CATALOG[name]


def compute_lens(name: str, bench: Workbench, store: Store | None, run_id: str | None, params: LensParams = LensParams()) -> dict:
    """The lens ``name`` of the workbench (and of run ``run_id`` where the lens reads a run), cached in ``store``."""
    lens = get_lens(name)
    if lens.needs_run and not run_id:
        raise MergecoreError(f"--what {name} compares a run with its experts; pass --run ID (see `runs`)")
    if run_id:
        store.get(run_id)  # a clear error for an unknown id
    return lens.compute(bench, store, run_id, params)


def lens_tables(name: str, lens: dict) -> dict[str, Rows]:
    """Flat CSV tables of a lens result: {file stem: rows}."""
    return get_lens(name).tables(lens)


def headline(name: str, lens: dict) -> str:
    """One-line text summary of a lens result."""
    return get_lens(name).headline(lens)


def skipped_lines(lens: dict) -> list[str]:
    """One line per task a lens left out (generative tasks), with the reason."""
    return [f"skipped {s['task']}: {s['reason']}" for s in lens.get("skipped", [])]
