"""The merge card: what was merged, how, with which scores (merge_card.json), and a README with a loading
snippet for the exported folder."""

from __future__ import annotations

import time

from mergecore.export.full import base_name, bench_family
from mergecore.export.params import ExportInputs, ExportParams
from mergecore.export.peft import CARD_FILE, README_FILE, head_modules, num_labels
from mergecore.files import __version__
from mergecore.forward.workbench import Workbench
from mergecore.numbers import fmt
from mergecore.runs.folder import RunSource


def run_coefficients(run: RunSource):
    """Learned coefficients (one row when task-wise), or a static run's weights."""
    coefs = run.result.get("coefs")
    if coefs:
        return coefs[0] if all(row == coefs[0] for row in coefs) else coefs
    return run.config.get("weights")


def shown_params(cfg: dict) -> dict | None:
    """The run's parameters as the card shows them: a learned run's unset start value reads '1/K'."""
    params = cfg.get("params")
    if cfg.get("method") == "learned" and isinstance(params, dict) and "init" in params and params["init"] is None:
        return {**params, "init": "1/K"}
    return params


def merge_card(bench: Workbench | ExportInputs, run: RunSource, params: ExportParams, head: str, files: dict[str, str],
               ranks: dict[str, int], report: dict) -> dict:
    cfg = run.config
    return {
        "format": "mergecore-merge-card/1", "mergecore_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "base_model": base_name(bench),
        "run": {"id": run.id, "name": run.name, "kind": run.kind, "status": run.result.get("status")},
        "sources": [{"name": a.name, "source": a.source, "sha256": a.sha256, "ranks": sorted(set(a.ranks.values())),
                     "target_modules": sorted(a.factors)} for a in bench.adapters.adapters],
        "method": cfg.get("method"), "parameters": shown_params(cfg),
        "objective": (cfg.get("params") or {}).get("objective") if run.kind == "learned" else None,
        "coefficients": run_coefficients(run),
        "data": [{"task": t.get("name"), "fingerprint": t.get("fingerprint"), "metric": t.get("metric")}
                 for t in cfg.get("tasks") or []],
        "scores": run.result.get("scores"), "average": run.result.get("average"), "anp": run.result.get("anp"),
        "export": {"mode": params.mode, "rank": params.rank if params.mode == "compressed" else None,
                   "family": bench_family(bench), "ranks": ranks,
                   "head": head if bench_family(bench) == "classifier" else None,
                   "head_modules": head_modules(bench), "heads": files, "num_labels": num_labels(bench), **report},
    }


LM_CLASSES = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}


LM_USE = '''with torch.no_grad():
    out = model.generate(**tok(["an example"], return_tensors="pt"), max_new_tokens=8)
text = tok.batch_decode(out, skip_special_tokens=True)
'''


def loading_snippet(card: dict, folder_name: str) -> str:
    """Python that loads the export with transformers + PEFT only (no mergecore), with the base model's
    own class: a classifier (the chosen task's head), a seq2seq LM or a causal LM (no heads)."""
    ex, base = card["export"], card["base_model"]
    family = ex.get("family")  # a card written before the family was recorded: a classifier
    if family in LM_CLASSES:
        cls = LM_CLASSES[family]
        if ex["mode"] == "full":
            return (f"import torch\nfrom transformers import {cls}, AutoTokenizer\n\n"
                    f"MODEL = {folder_name!r}  # this folder\n"
                    f"model = {cls}.from_pretrained(MODEL).eval()\ntok = AutoTokenizer.from_pretrained(MODEL)\n"
                    + LM_USE)
        return (f"import torch\nfrom peft import PeftModel\nfrom transformers import {cls}, AutoTokenizer\n\n"
                f"ADAPTER = {folder_name!r}  # this folder\n"
                f"BASE = {base!r}  # the base model (a hub id or a local copy)\n"
                f"base = {cls}.from_pretrained(BASE)\n"
                f"model = PeftModel.from_pretrained(base, ADAPTER).eval()\n"
                f"tok = AutoTokenizer.from_pretrained(BASE)\n" + LM_USE)
    head, n = ex["head"], ex["num_labels"][ex["head"]]
    if ex["mode"] == "full":
        return (f"import torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f"MODEL = {folder_name!r}  # this folder\n"
                f"model = AutoModelForSequenceClassification.from_pretrained(MODEL).eval()\n"
                f"tok = AutoTokenizer.from_pretrained(MODEL)\nwith torch.no_grad():\n"
                f"    probs = model(**tok([\"an example\"], return_tensors=\"pt\")).logits.softmax(-1)\n")
    other = next((t for t in ex["heads"] if t != head), None)  # a second head to swap in, if any
    load_file = "from safetensors.torch import load_file\n" if other is not None else ""
    code = f'''import torch
from peft import PeftModel
{load_file}from transformers import AutoModelForSequenceClassification, AutoTokenizer

ADAPTER = {folder_name!r}  # this folder
BASE = {base!r}  # the base model (a hub id or a local copy)
base = AutoModelForSequenceClassification.from_pretrained(  # a {n}-way head: the one of task {head!r}
    BASE, num_labels={n}, ignore_mismatched_sizes=True)
model = PeftModel.from_pretrained(base, ADAPTER).eval()
tok = AutoTokenizer.from_pretrained(BASE)
with torch.no_grad():
    probs = model(**tok(["an example"], return_tensors="pt")).logits.softmax(-1)
'''
    if other is None:
        return code
    return code + f'''

def use_head(model, head_file, modules={ex["head_modules"]!r}):
    """Swap in another task's head (heads/<task>.safetensors); label counts may differ."""
    state = load_file(head_file)
    root = model.base_model.model
    for name in modules:
        active = root.get_submodule(name).modules_to_save["default"]
        for key, value in state.items():
            if key.startswith(name + "."):
                owner, _, leaf = key[len(name) + 1:].rpartition(".")
                setattr(active.get_submodule(owner), leaf, torch.nn.Parameter(value, requires_grad=False))


use_head(model, ADAPTER + "/{ex["heads"][other]}")  # now the model answers task {other!r}
'''


README = """\
# Merged {what}: {name}

Made by mergecore {version} from run `{run_id}` (method `{method}`{objective}) on base model `{base}` ({family}).

- export: **{mode}**{rank}{head}
- sources: {sources}
{scores}{energy}
Files: {files}; `{card_file}` holds the full record.
{heads}
## Load it (transformers{peft} only)

```python
{snippet}
```
"""


def card_readme(card: dict, folder_name: str) -> str:
    """README.md (the ``README`` template): what was merged, how well, the files this folder holds, and
    how to load it."""
    ex = card["export"]
    scores = card.get("scores") or {}
    family = ex.get("family", "classifier")
    full = ex["mode"] == "full"
    energy = ""
    if ex.get("energy"):
        change = ex.get("probability_change") or {}
        energy = f"- retained energy: {ex['energy']['overall']:.4f} overall, {ex['energy']['min']:.4f} worst module"
        if change.get("max") is not None:
            energy += f"; largest label-probability change on calibration inputs: {change['max']:.4g}"
        if change.get("left_out"):
            energy += f" (generative tasks left out of that report: {', '.join(change['left_out'])})"
        energy += "\n"
    files = sorted(set(card.get("files") or {}) | {CARD_FILE, README_FILE})
    return README.format(
        what="model (full weights)" if full else "LoRA adapter", name=card["run"]["name"],
        version=card["mergecore_version"], run_id=card["run"]["id"], method=card["method"],
        objective=f", objective `{card['objective']}`" if card.get("objective") else "",
        base=card["base_model"], family=family, mode=ex["mode"],
        rank=f" (rank {ex['rank']})" if ex.get("rank") else "",
        head=f", head in the {'model' if full else 'adapter'}: `{ex['head']}`" if ex.get("head") else "",  # LMs: None
        sources=", ".join(f"`{s['name']}` (sha256 {s['sha256'][:12]})" for s in card["sources"]),
        scores="- scores: " + ", ".join(f"{t} {fmt(v)}" for t, v in scores.items()) + "\n" if scores else "",
        energy=energy, files=", ".join(f"`{f}`" for f in files), card_file=CARD_FILE,
        heads="Each task's classifier head is in `heads/<task>.safetensors`.\n" if ex.get("heads") else "",
        peft="" if full else " + PEFT", snippet=loading_snippet(card, folder_name).rstrip())
