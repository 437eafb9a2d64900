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
Writes are atomic (temporary folder next to the target, then rename) and never overwrite an
existing target unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergecore.adapters import AdapterSet
from mergecore.errors import MergecoreError
from mergecore.merges.base import ModuleMerge
from mergecore.numbers import dumps, fmt

MODES = ("exact", "compressed", "full")
PREFIX = "base_model.model."
CARD_FILE, README_FILE, HEADS_DIR = "merge_card.json", "README.md", "heads"
Merge = dict[str, ModuleMerge]


@dataclass(frozen=True)
class ExportParams:
    """What to write; defaults give the exact adapter with the first task's head."""

    mode: str = field(default="exact", metadata={"help": "exact (rank = sum of source ranks), compressed (rank r "
                                                         "by truncated SVD) or full (merged model weights)",
                                                 "choices": MODES})
    rank: int = field(default=8, metadata={"help": "rank r of the compressed adapter (compressed mode only)"})
    head: str = field(default="", metadata={"help": "task whose head the adapter carries (modules_to_save); "
                                                    "empty = the first task"})
    samples: int = field(default=128, metadata={"help": "calibration examples per task for the probability-change "
                                                        "report (compressed mode)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing target folder"})

    def validate(self) -> "ExportParams":
        if self.mode not in MODES:
            raise MergecoreError(f"unknown export mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.mode == "compressed" and self.rank < 1:
            raise MergecoreError(f"rank must be at least 1 for a compressed export (got {self.rank})")
        if self.samples < 1:
            raise MergecoreError(f"samples must be at least 1 (got {self.samples})")
        return self


@dataclass(frozen=True)
class RunSource:
    """A run to export: its record fields and its merged update."""

    id: str
    name: str
    kind: str
    config: dict
    result: dict
    merge: Merge


@dataclass(frozen=True)
class ExportResult:
    path: Path
    card: dict
    files: list[str]


# ----------------------------------------------------------------------------- reading runs


def load_run(ref: str | Path, store, adapters: AdapterSet) -> RunSource:
    """A run by store id, or a run folder written by ``write_run_folder`` (run.json + tensors)."""
    folder = Path(str(ref)).expanduser()
    if folder.is_dir():
        return read_run_folder(folder, adapters)
    if store is None:
        raise MergecoreError(f"{ref} is neither a run folder nor a run id with a workspace; pass --workspace")
    from mergecore.merged import run_merge

    rec = store.get(str(ref))
    check_run_adapters(rec.config, adapters, rec.id)
    return RunSource(rec.id, rec.name, rec.kind, rec.config, rec.result, run_merge(store, rec.id, adapters))


def read_run_folder(folder: Path, adapters: AdapterSet) -> RunSource:
    """run.json + merged.safetensors (any run) or coefs.safetensors (learned coefficients)."""
    from mergecore.merged import coefs_to_merge, tensors_to_merge

    try:
        meta = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        rid, config = str(meta["id"]), dict(meta["config"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MergecoreError(f"{folder / 'run.json'} is missing or corrupt ({type(exc).__name__}); "
                             "write the run folder again with `learn --out` / `merge --out`") from None
    check_run_adapters(config, adapters, rid)
    if (folder / "merged.safetensors").is_file():
        merge = tensors_to_merge(_read_tensors(folder / "merged.safetensors"))
    elif (folder / "coefs.safetensors").is_file():
        coefs = _read_tensors(folder / "coefs.safetensors").get("coefs")
        if coefs is None or tuple(coefs.shape) != (len(adapters.modules), len(adapters)):
            raise MergecoreError(f"{folder / 'coefs.safetensors'} does not hold (modules x adapters) coefficients "
                                 "for the loaded adapters; load the run's adapters")
        merge = coefs_to_merge(adapters, coefs)
    else:
        raise MergecoreError(f"{folder} holds no merged.safetensors or coefs.safetensors; "
                             "export this run from the workspace by its id instead")
    return RunSource(rid, str(meta.get("name", rid)), str(meta.get("kind", "")), config,
                     dict(meta.get("result") or {}), merge)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except Exception as exc:
        raise MergecoreError(f"{path} is corrupt or truncated ({type(exc).__name__}); write the run folder again") from None


def check_run_adapters(config: dict, adapters: AdapterSet, run_id: str) -> None:
    """Refuse a run learned on other adapters (names and content hashes from its config)."""
    want = [(a.get("name"), a.get("sha256")) for a in config.get("adapters") or []]
    have = [(a.name, a.sha256) for a in adapters.adapters]
    if want and want != have:
        raise MergecoreError(
            f"run {run_id} was made from adapters {[n for n, _ in want]} with other contents than the loaded "
            f"{[n for n, _ in have]}; load the run's adapters (same folders) before exporting"
        )


# ----------------------------------------------------------------------------- factor maths


def exact_factors(merge: Merge) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(B, A) per module as stored (float32); refuses dense merges."""
    dense = [name for name, m in merge.items() if not m.is_factored]
    if dense:
        raise MergecoreError(f"this run is dense ({len(dense)} modules, e.g. TIES/DARE): it has no exact LoRA form; "
                             "export it compressed (--rank r) or as full weights (--full-weights)")
    return {name: (m.B.float().cpu().contiguous(), m.A.float().cpu().contiguous()) for name, m in merge.items()}


def truncate(m: ModuleMerge, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-r factors of one module's delta: (B (out, r), A (r, in), all singular values).

    Factored: thin QR of B and A^T, SVD of the small core R_B R_A^T (float64). Dense: SVD of the delta.
    """
    if m.is_factored:
        Qb, Rb = torch.linalg.qr(m.B.double().cpu())
        Qa, Ra = torch.linalg.qr(m.A.double().cpu().T)
        P, S, Qh = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
        left, right = Qb @ P, Qh @ Qa.T
    else:
        left, S, right = torch.linalg.svd(m.dense.double().cpu(), full_matrices=False)
    r = min(rank, S.shape[0])
    return (left[:, :r] * S[:r]).float().contiguous(), right[:r].float().contiguous(), S


def retained_energy(S: torch.Tensor, rank: int) -> float:
    """Share of the squared Frobenius norm kept by the top ``rank`` singular values (1 for a zero delta)."""
    total = float((S.double() ** 2).sum())
    return 1.0 if total <= 0.0 else float((S[:rank].double() ** 2).sum()) / total


def compress(merge: Merge, rank: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Rank-r factors of every module and the energy report (per module and overall)."""
    factors, per_module, kept, total = {}, {}, 0.0, 0.0
    for name, m in merge.items():
        B, A, S = truncate(m, rank)
        factors[name] = (B, A)
        per_module[name] = retained_energy(S, rank)
        sq = float((S.double() ** 2).sum())
        kept, total = kept + per_module[name] * sq, total + sq
    return factors, {"per_module": per_module, "overall": kept / total if total > 0 else 1.0,
                     "min": min(per_module.values())}


def probability_change(bench, full: Merge, approx: Merge, samples: int) -> dict:
    """Largest |p_full - p_approx| over the calibration inputs, per label task and overall.

    Generative tasks have no label probabilities: they are left out and named in ``left_out``."""
    from mergecore.merged import MergedSource

    left_out = [t.name for t in bench.tasks if t.generative]
    if len(left_out) == bench.num_tasks:
        return {"per_task": {}, "max": None, "samples": samples, "left_out": left_out}
    p_full = bench.predict(MergedSource(full, bench.device), "calibration", limit=samples)
    p_approx = bench.predict(MergedSource(approx, bench.device), "calibration", limit=samples)
    per_task = {t: float((a - b).abs().max()) for t, a, b in zip(bench.tasks.names, p_full, p_approx)
                if a is not None}  # generative tasks: None in both
    return {"per_task": per_task, "max": max(per_task.values()), "samples": samples, "left_out": left_out}


def factors_to_merge(factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Merge:
    return {name: ModuleMerge("lora-factors", B=B, A=A) for name, (B, A) in factors.items()}


# ----------------------------------------------------------------------------- names and heads


def safe_name(name: str) -> str:
    """A file-name-safe form of a task name: letters, digits, '-', '_', '.'; never '.', '..' or hidden."""
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).lstrip(".-")
    return s[:100] or "task"


def head_files(task_names: list[str]) -> dict[str, str]:
    """Task -> relative file ``heads/<safe name>.safetensors``; refuses names that collide once sanitised."""
    files = {t: f"{HEADS_DIR}/{safe_name(t)}.safetensors" for t in task_names}
    if len(set(files.values())) != len(files):
        raise MergecoreError(f"task names {task_names} collide once made file-name safe; rename the tasks")
    return files


def inside(folder: Path, rel: str) -> Path:
    """``folder / rel``, refusing any path that escapes ``folder``."""
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise MergecoreError(f"file name {rel!r} escapes the export folder; use plain names")
    return path


def task_heads(bench) -> dict[str, dict[str, torch.Tensor]]:
    """Task -> its adapter's saved head tensors (``classifier.weight`` ...); task k pairs with adapter k."""
    return {t: {k: v.float().cpu().contiguous() for k, v in a.extra.items()}
            for t, a in zip(bench.tasks.names, bench.adapters.adapters)}


def head_modules(bench) -> list[str]:
    return sorted({h for a in bench.adapters.adapters for h in a.head_modules})


def pick_head(bench, head: str) -> str:
    names = bench.tasks.names
    if not head:
        return names[0]
    if head not in names:
        raise MergecoreError(f"unknown head task {head!r}; choose one of {', '.join(names)}")
    return head


def num_labels(bench) -> dict[str, int]:
    return {t.name: t.num_labels for t in bench.tasks}


# ----------------------------------------------------------------------------- PEFT adapter


STRUCTURAL = ("encoder", "decoder", "layers", "layer", "h", "block", "blocks")  # never a model-class prefix


def class_prefix(modules: list[str], heads: list[str]) -> str:
    """The prefix the task model class puts before the bare model (``bert.``, ``model.``, ``transformer.``).

    It is the first name every LoRA module shares, when it is not a layer container and no head lives
    under it; '' when there is none (T5, or adapters trained on the bare model)."""
    firsts = {m.split(".", 1)[0] for m in modules}
    if len(firsts) != 1 or any("." not in m for m in modules):
        return ""
    first = firsts.pop()
    if first in STRUCTURAL or first.isdigit() or any(h.split(".", 1)[0] == first for h in heads):
        return ""
    return first + "."


def adapter_config(base_model: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   heads: list[str], task_type: str | None, fan_in_fan_out: bool = False) -> dict:
    """adapter_config.json, scale 1 everywhere (lora_alpha == r per module through the patterns).

    Targets are named without the task class's prefix (``encoder.layer.0.attention.self.query``), which
    PEFT matches as a suffix on the task class and exactly on the bare model."""
    prefix = class_prefix(list(factors), heads)
    ranks = {name[len(prefix):]: int(A.shape[0]) for name, (_, A) in factors.items()}
    r = max(set(ranks.values()), key=lambda v: (list(ranks.values()).count(v), v))
    pattern = {re.escape(name): rk for name, rk in ranks.items() if rk != r}
    return {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks), "modules_to_save": heads or None, "lora_dropout": 0.0,
        "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": fan_in_fan_out,
        "init_lora_weights": True, "inference_mode": True,
    }


def adapter_tensors(factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    head: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """PEFT's saved key layout: ``base_model.model.<module>.lora_{A,B}.weight`` + head tensors.

    With a class prefix the factors are written twice, under the task class's names and the bare
    model's, so the adapter loads with its weights on both (PEFT ignores the keys a model lacks)."""
    out = {}
    for name, (B, A) in factors.items():
        names = [name] + ([name[len(prefix):]] if prefix and name.startswith(prefix) else [])
        for n in names:
            out[f"{PREFIX}{n}.lora_A.weight"] = A.float().clone().contiguous()
            out[f"{PREFIX}{n}.lora_B.weight"] = B.float().clone().contiguous()
    for key, t in head.items():
        out[PREFIX + key] = t.float().contiguous()
    return out


def write_adapter(folder: Path, adapters: AdapterSet, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  head: dict[str, torch.Tensor], base_model: str) -> dict:
    """Write a plain PEFT adapter (config + safetensors) carrying ``factors`` and one task's ``head``."""
    heads = sorted({h for a in adapters.adapters for h in a.head_modules})
    task_type = adapters.adapters[0].config.get("task_type")
    fan_in = any(bool(a.config.get("fan_in_fan_out")) for a in adapters.adapters)  # GPT-2 Conv1D targets
    config = adapter_config(base_model, factors, heads, task_type, fan_in_fan_out=fan_in)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_tensors(folder / "adapter_model.safetensors",
                 adapter_tensors(factors, head, class_prefix(list(factors), heads)))
    return config


def bench_family(bench) -> str:
    """The bench's model family: 'classifier', 'seq2seq' or 'causal' (its reader's)."""
    family = getattr(bench.reader, "family", None)
    return family if family in ("classifier", "seq2seq", "causal") else "classifier"


def base_folder(bench) -> str | None:
    """The local folder the bench's base model was read from (``--base-path`` included), when there is one."""
    config = getattr(getattr(bench.model, "model", None), "config", None)
    path = str(getattr(config, "_name_or_path", "") or "")
    return path if path and Path(path).is_dir() else None


def full_model(bench, merge: Merge, head_task: str, head: dict[str, torch.Tensor]):
    """A fresh base model of the bench's family (the base's own class: classifier with ``head_task``'s
    head, seq2seq LM or causal LM with its lm_head) with the merged delta added to its weights."""
    from mergecore.bases import load_base

    family = bench_family(bench)
    task = bench.tasks.by_name(head_task)
    model, tokenizer, _ = load_base(base_name(bench), family, base_path=base_folder(bench),
                                    num_labels=task.num_labels)  # the head's size (LMs ignore it)
    if family == "classifier":
        missing = [k for k in model.load_state_dict(head, strict=False).unexpected_keys]
        if missing:
            raise MergecoreError(f"head tensors {missing} do not exist in the base model; check the base model")
    with torch.no_grad():
        for name, m in merge.items():
            layer = model.get_submodule(name)
            delta = m.delta() if isinstance(layer, torch.nn.Linear) else m.delta().T  # GPT-2 Conv1D: (in, out)
            layer.weight += delta.to(layer.weight.dtype).to(layer.weight.device)
    if family == "classifier":
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {n: i for i, n in enumerate(task.label_names)}
    return model, tokenizer


def base_name(bench) -> str:
    return bench.base_name or bench.adapters.base_model


# ----------------------------------------------------------------------------- merge card


def run_coefficients(run: RunSource):
    """Learned coefficients (one row when task-wise), or a static run's weights."""
    coefs = run.result.get("coefs")
    if coefs:
        return coefs[0] if all(row == coefs[0] for row in coefs) else coefs
    return run.config.get("weights")


def merge_card(bench, run: RunSource, params: ExportParams, head: str, files: dict[str, str],
               ranks: dict[str, int], report: dict) -> dict:
    from mergecore import __version__

    cfg = run.config
    return {
        "format": "mergecore-merge-card/1", "mergecore_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "base_model": base_name(bench),
        "run": {"id": run.id, "name": run.name, "kind": run.kind, "status": run.result.get("status")},
        "sources": [{"name": a.name, "source": a.source, "sha256": a.sha256, "ranks": sorted(set(a.ranks.values())),
                     "target_modules": sorted(a.factors)} for a in bench.adapters.adapters],
        "method": cfg.get("method"), "parameters": cfg.get("params"),
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
    ex = card["export"]
    family, base = ex.get("family", "classifier"), card["base_model"]
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
        head=(f", head in the {'model' if full else 'adapter'}: `{ex['head']}`"
              if family == "classifier" and ex.get("head") else ""),
        sources=", ".join(f"`{s['name']}` (sha256 {s['sha256'][:12]})" for s in card["sources"]),
        scores="- scores: " + ", ".join(f"{t} {fmt(v)}" for t, v in scores.items()) + "\n" if scores else "",
        energy=energy, files=", ".join(f"`{f}`" for f in files), card_file=CARD_FILE,
        heads="Each task's classifier head is in `heads/<task>.safetensors`.\n" if ex.get("heads") else "",
        peft="" if full else " + PEFT", snippet=loading_snippet(card, folder_name).rstrip())


# ----------------------------------------------------------------------------- atomic folder writes


def check_target(out: Path, overwrite: bool) -> Path:
    """The resolved target; refuses a file, or an existing folder without ``overwrite``."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise MergecoreError(f"export target {out} is a file; choose a folder path")
    if out.exists() and not overwrite:
        raise MergecoreError(f"export target {out} already exists; choose a new folder or pass --force (overwrite=True)")
    return out


@contextmanager
def atomic_folder(out: Path, overwrite: bool = False):
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` by rename, on error it vanishes."""
    out = check_target(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise MergecoreError(f"cannot write into {out.parent} ({exc.strerror}); choose a writable folder") from None
    try:
        yield tmp
        _swap(tmp, check_target(out, overwrite))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- export


def prepare(bench, run: RunSource, params: ExportParams) -> tuple[dict | None, dict]:
    """Factors to write (None for full weights) and the report (energy, probability change)."""
    if params.mode == "exact":
        return exact_factors(run.merge), {}
    if params.mode == "full":
        return None, {}
    factors, energy = compress(run.merge, params.rank)
    change = probability_change(bench, run.merge, factors_to_merge(factors), params.samples)
    return factors, {"energy": energy, "probability_change": change}


def export_run(bench, run: RunSource, out: str | Path, params: ExportParams = ExportParams()) -> ExportResult:
    """Write the run as a PEFT adapter folder (or full weights) + heads + merge card, atomically."""
    params = params.validate()
    check_target(out, params.overwrite)
    check_run_adapters(run.config, bench.adapters, run.id)
    head = pick_head(bench, params.head)
    heads = task_heads(bench)
    files = {t: f for t, f in head_files(bench.tasks.names).items() if heads[t]}
    factors, report = prepare(bench, run, params)
    ranks = {n: int(A.shape[0]) for n, (_, A) in (factors or {}).items()}
    card = merge_card(bench, run, params, head, files, ranks, report)
    with atomic_folder(out, params.overwrite) as tmp:
        if factors is None:
            model, tokenizer = full_model(bench, run.merge, head, heads[head])
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        else:
            write_adapter(tmp, bench.adapters, factors, heads[head], base_name(bench))
        _write_heads(tmp, heads, files, bench)
        card["snippet"] = loading_snippet(card, Path(out).name)
        card["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / CARD_FILE).write_text(dumps(card, indent=2, default=float))  # NaN scores -> null
        (tmp / README_FILE).write_text(card_readme(card, Path(out).name))
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return ExportResult(check_target(out, True), card, written)


def _write_heads(folder: Path, heads: dict[str, dict[str, torch.Tensor]], files: dict[str, str], bench) -> None:
    for task, tensors in heads.items():
        if task in files:
            labels = bench.tasks.by_name(task).label_names
            save_tensors(inside(folder, files[task]), tensors,
                         {"task": task, "num_labels": str(len(labels)), "labels": json.dumps(list(labels))})


def zip_folder(folder: str | Path) -> bytes:
    """The folder as zip bytes, entries under ``<folder name>/`` (for a download button)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{folder.name}/{p.relative_to(folder).as_posix()}")
    return buf.getvalue()
