"""GLUE: the 8 tasks SourceJS / FusionBench merge (CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE).

Each ``GlueSpec`` holds the prompt template and verbalizers FusionBench's flan-t5 GLUE LoRA
adapters were trained with (so hub adapters read their labels off the same words), the metric
(Matthews corr. for CoLA, mean of Pearson and Spearman for STS-B, accuracy elsewhere), the
Hugging Face ``glue`` config, and the local TSV layout. Calibration inputs come from the
training split, evaluation from dev, as the papers do; sizes are configurable and drawn with a
seeded generator.

STS-B is read as classification over score bins ("0.0", "0.2", ... "5.0" by default): the
reader scores each bin's text, ``Task.label_values`` holds the bin values, and evaluation uses
the expected value (``evaluate.predictions``). Its calibration labels are bin indices (for the
supervised objective), its evaluation labels the raw scores.

Sources: ``"hf"`` (``datasets.load_dataset("glue", ...)``, online), a local folder in the
standard ``<TASK>/<split>.tsv`` layout of the GLUE download (train.tsv, dev.tsv), or
``"auto"`` (the folder from ``$MERGECORE_GLUE`` when set, else the hub).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mergecore.data.hub import TRUE, hub_reachable
from mergecore.data.taskfiles import Columns, load_split, sample
from mergecore.data.tasks import Split, Task, TaskSet
from mergecore.errors import MergecoreError

YES_NO = {"0": "no", "1": "yes"}


@dataclass(frozen=True)
class GlueSpec:
    name: str  # our task name
    hf_config: str  # datasets.load_dataset("glue", hf_config)
    folder: str  # local folder name
    train_file: str
    dev_file: str
    hf_eval: str  # HF evaluation split
    columns: Columns  # local TSV columns
    hf_text: tuple[str, ...]  # HF text columns (same order as columns.text)
    label_names: tuple[str, ...]
    verbalizers: tuple[str, ...]
    prompt: str
    metric: str = "accuracy"


def _entail(*labels: str) -> dict:
    return {lab: i for i, lab in enumerate(labels)}


SPECS: dict[str, GlueSpec] = {s.name: s for s in (
    GlueSpec("cola", "cola", "CoLA", "train.tsv", "dev.tsv", "validation",
             Columns(text=("3",), label="1", label_map={"0": 0, "1": 1}, header=False), ("sentence",),
             ("unacceptable", "acceptable"), ("unacceptable", "acceptable"),
             "Indicate if the following sentence is grammatically correct or not: \"{0}\". "
             "Answere 'acceptable' or 'unacceptable'.", "matthews"),
    GlueSpec("sst2", "sst2", "SST-2", "train.tsv", "dev.tsv", "validation",
             Columns(text=("sentence",), label="label", label_map={"0": 0, "1": 1}), ("sentence",),
             ("negative", "positive"), ("negative", "positive"),
             "Given the sentence '{0}', determine the sentiment. Is it positive or negative?"),
    GlueSpec("mrpc", "mrpc", "MRPC", "train.tsv", "dev_msr_text.tsv", "validation",
             Columns(text=("#1 String", "#2 String"), label="Quality", label_map={"0": 0, "1": 1}),
             ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("no", "yes"),
             "Are the following sentences '{0}' and '{1}' conveying the same meaning? Answere with 'yes' or 'no'."),
    GlueSpec("qqp", "qqp", "QQP", "train_subset20k.tsv", "train_heldout.tsv", "validation",
             Columns(text=("question1", "question2"), label="is_duplicate", label_map={"0": 0, "1": 1}),
             ("question1", "question2"), ("not_duplicate", "duplicate"), ("no", "yes"),
             "Do the questions '{0}' and '{1}' have the same intent? Answere with 'yes' or 'no'."),
    GlueSpec("stsb", "stsb", "STS-B", "train.tsv", "dev.tsv", "validation",
             Columns(text=("sentence1", "sentence2"), label="score", numeric=True), ("sentence1", "sentence2"),
             (), (), "Consider the sentences '{0}' and '{1}'. On a scale from 1 (completely different) to 5 "
             "(completely similar), rate the similarity.", "pearson_spearman"),
    GlueSpec("mnli", "mnli", "MNLI", "train_subset.tsv", "dev_matched.tsv", "validation_matched",
             Columns(text=("premise", "hypothesis"), label="label",
                     label_map=_entail("entailment", "neutral", "contradiction")), ("premise", "hypothesis"),
             ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
             "Does the premise: '{0}' logically imply, contradict, or is neutral to the hypothesis: '{1}'? "
             "Answere with 'entailment', 'contradiction', or 'neutral'."),
    GlueSpec("qnli", "qnli", "QNLI", "train_subset.tsv", "dev.tsv", "validation",
             Columns(text=("question", "sentence"), label="label", label_map=_entail("entailment", "not_entailment")),
             ("question", "sentence"), ("entailment", "not_entailment"), ("yes", "no"),
             "Given the context: '{1}', does the question '{0}' have an answer based on the information provided? "
             "Answer with 'yes' or 'no'."),
    GlueSpec("rte", "rte", "RTE", "train.tsv", "dev.tsv", "validation",
             Columns(text=("sentence1", "sentence2"), label="label", label_map=_entail("entailment", "not_entailment")),
             ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("yes", "no"),
             "Does the text: '{0}' entail that '{1}' is true? Provide 'yes' or 'no'."),
)}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}
GLUE_TASKS = tuple(SPECS)


@dataclass(frozen=True)
class GlueParams:
    """How much GLUE data to use; defaults follow SourceJS (128 unlabeled calibration inputs per task)."""

    calibration: int = field(default=128, metadata={"help": "training-split examples per task for learning (0: all)"})
    evaluation: int = field(default=0, metadata={"help": "dev examples per task for evaluation (0: all)"})
    labeled_calibration: bool = field(default=True, metadata={"help": "keep calibration labels (for the ce objective)"})
    seed: int = field(default=0, metadata={"help": "seed of the example sampling"})
    stsb_step: float = field(default=0.2, metadata={"help": "STS-B bin width of the score verbalizers"})


def spec(name: str) -> GlueSpec:
    key = ALIASES.get(name.lower(), name.lower().replace("glue-", ""))
    if key not in SPECS:
        raise MergecoreError(f"unknown GLUE task {name!r}; valid: {', '.join(GLUE_TASKS)}")
    return SPECS[key]


def stsb_bins(step: float) -> tuple[float, ...]:
    if not 0 < step <= 5:
        raise MergecoreError(f"stsb_step must be in (0, 5] (got {step})")
    n = int(round(5.0 / step))
    return tuple(round(i * 5.0 / n, 4) for i in range(n + 1))


def make_task(s: GlueSpec, train: Split, dev: Split, params: GlueParams) -> Task:
    """A Task from raw splits: sampling, STS-B binning, unlabeled calibration when asked."""
    calib, evaluation = sample(train, params.calibration, params.seed), sample(dev, params.evaluation, params.seed + 1)
    label_names, verbalizers, values = s.label_names, s.verbalizers, ()
    if s.metric == "pearson_spearman":
        values = stsb_bins(params.stsb_step)
        label_names = verbalizers = tuple(f"{v:.1f}" if params.stsb_step >= 0.1 else f"{v:g}" for v in values)
        if calib.labels is not None:
            bins = torch.tensor(values)
            calib = Split(calib.inputs, tuple(int((bins - y).abs().argmin()) for y in calib.labels))
    if not params.labeled_calibration:
        calib = Split(calib.inputs, None)
    return Task(s.name, label_names, calib, evaluation, metric=s.metric, prompt=s.prompt, verbalizers=verbalizers,
                field_names=s.hf_text, description=f"GLUE {s.folder}", label_values=values)


def local_splits(s: GlueSpec, folder: Path) -> tuple[Split, Split]:
    root = Path(folder).expanduser() / s.folder
    if not root.is_dir():
        raise MergecoreError(f"{root} does not exist; the GLUE folder needs a {s.folder}/ subfolder with "
                             f"{s.train_file} and {s.dev_file}")
    return load_split(root / s.train_file, s.columns), load_split(root / s.dev_file, s.columns)


GLUE_NEEDS = ("GLUE needs a local folder with <TASK>/train.tsv, dev.tsv (the GLUE folder field, --glue-dir or "
              "$MERGECORE_GLUE) or the Hugging Face hub, which {why}")


def hub_refusal() -> str | None:
    """One line when GLUE cannot come from the hub now; None in offline mode (datasets then reads its cache and
    fails at once when the data is not there)."""
    if any(os.environ.get(v, "").strip().lower() in TRUE for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return None
    return None if hub_reachable() else GLUE_NEEDS.format(why="is unreachable from here")


def hub_splits(s: GlueSpec) -> tuple[Split, Split]:
    refusal = hub_refusal()
    if refusal:
        raise MergecoreError(refusal)
    try:
        from datasets import load_dataset  # optional and heavy (~2 s): only for GLUE from the hub

        ds = load_dataset("nyu-mll/glue", s.hf_config)
    except Exception as exc:  # offline, no cache
        why = f"gave no GLUE {s.hf_config} ({type(exc).__name__})"
        raise MergecoreError(GLUE_NEEDS.format(why=why)) from None

    def split(part) -> Split:
        inputs = tuple(tuple(str(row[c]) for c in s.hf_text) for row in part)
        return Split(inputs, tuple(float(y) if s.metric == "pearson_spearman" else int(y) for y in part["label"]))

    return split(ds["train"]), split(ds[s.hf_eval])


def load_glue(names: list[str] | None = None, source: str | Path = "auto", params: GlueParams = GlueParams()) -> TaskSet:
    """GLUE tasks as a TaskSet: ``source`` is 'hf', 'auto' or a local GLUE folder."""
    specs = [spec(n) for n in (names or GLUE_TASKS)]
    if str(source) == "auto":
        source = os.environ.get("MERGECORE_GLUE") or "hf"
    tasks = []
    for s in specs:
        train, dev = hub_splits(s) if str(source) == "hf" else local_splits(s, Path(source))
        tasks.append(make_task(s, train, dev, params))
    return TaskSet(tuple(tasks))


def match_tasks(adapter_names: list[str]) -> list[str]:
    """The GLUE task of each adapter from its name ('flan-t5-base_glue-sst2_lora-16' -> 'sst2'), in order."""
    out = []
    for name in adapter_names:
        tokens = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
        candidates = set(tokens) | {a + b for a, b in zip(tokens, tokens[1:])}
        hits = [t for t in GLUE_TASKS if t in candidates]
        if len(hits) != 1:
            raise MergecoreError(f"cannot tell the GLUE task of adapter {name!r} from its name "
                                 f"({'none' if not hits else ', '.join(hits)} found); name the tasks explicitly")
        out.append(hits[0])
    return out


def with_prompt(task: Task, prompt: str) -> Task:
    """The same task under another template (e.g. a decoder-only prompt ending in 'Answer:')."""
    return replace(task, prompt=prompt)
