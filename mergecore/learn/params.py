"""What a learning run is given: LearnParams (paper defaults; the CLI flags, the app's form and the merge card
derive from it) and the papers' presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from mergecore.errors import MergecoreError
from mergecore.forward.coefs import coefficient_transform
from mergecore.learn.objectives import OBJECTIVES, get_objective

GRANULARITIES = ("task", "layer", "block", "spectral")


L2_TARGETS = ("uniform", "start")


GENERATIVE_OBJECTIVES = ("js", "kl")  # token-level divergences on the expert's outputs (generative tasks)


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class LearnParams:
    """Hyperparameters of coefficient learning; defaults from SourceJS (lr 0.02 cosine, lambda 2e-4, 128 samples)."""

    objective: str = field(default="js", metadata=_help("training objective", choices=tuple(OBJECTIVES)))
    granularity: str = field(default="task", metadata=_help(
        "one coefficient per task, per LoRA module (layer), per block, or a gain per singular value (spectral)",
                                                             choices=GRANULARITIES))
    steps: int = field(default=150, metadata=_help("optimisation steps"))
    lr: float = field(default=0.02, metadata=_help("Adam learning rate (cosine schedule)"))
    l2: float = field(default=2e-4, metadata=_help("lambda: weight of the L2 pull ||Gamma - Gamma_0||^2 (SourceJS Eq. 7)"))
    l2_target: str = field(default="uniform", metadata=_help(
        "Gamma_0 of the L2 pull: 'uniform' = 1/K for every coefficient (SourceJS Eq. 7), 'start' = the start point "
        "(a stored run's coefficients or init); spectral runs always pull the gains toward 1 (the start merge)",
        choices=L2_TARGETS))
    init: float = field(default=-1.0, metadata=_help("start value of every coefficient; -1 means 1/K (SourceJS)"))
    samples: int = field(default=128, metadata=_help("unlabeled calibration examples per task"))
    batch_size: int = field(default=4, metadata=_help("examples per task in each step (DivMerge: 4 x tasks)"))
    labeled: int = field(default=64, metadata=_help("labeled examples per task for the supervised (ce) objective"))
    clamp: bool = field(default=False, metadata=_help("clamp coefficients to [0, 1]"))
    softmax: bool = field(default=False, metadata=_help("softmax-normalise coefficients over tasks"))
    eval_every: int = field(default=50, metadata=_help("evaluate metric and confidence every N steps (0: never)"))
    eval_limit: int = field(default=100, metadata=_help("evaluation examples per task for the periodic evaluation"))
    seed: int = field(default=0, metadata=_help("seed of the batch sampler"))
    precision: str = field(default="auto", metadata=_help(
        "auto: TF32 matmuls on CUDA, float32 on CPU; bf16: bf16 autocast on CUDA (coefficients and losses stay float32)",
        choices=("auto", "fp32", "bf16")))
    iterations: int = field(default=3, metadata=_help("spectral only: rethinking iterations T (LoRA-DV)"))
    start: str = field(default="uniform", metadata=_help(
        "start point: 'uniform', a stored run id, or a static method name (spectral starts from its merge)"))

    def validate(self) -> "LearnParams":
        get_objective(self.objective)
        if self.granularity not in GRANULARITIES:
            raise MergecoreError(f"unknown granularity {self.granularity!r}; valid: {', '.join(GRANULARITIES)}")
        for name in ("steps", "samples", "batch_size"):
            if getattr(self, name) < 1:
                raise MergecoreError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MergecoreError(f"lr must be a positive number (got {self.lr})")
        if self.l2_target not in L2_TARGETS:
            raise MergecoreError(f"unknown l2_target {self.l2_target!r}; valid: {', '.join(L2_TARGETS)}")
        coefficient_transform(self.clamp, self.softmax)
        if self.iterations < 1:
            raise MergecoreError(f"iterations must be at least 1 (got {self.iterations})")
        return self

    def start_value(self, num_tasks: int) -> float:
        return 1.0 / num_tasks if self.init < 0 else self.init


# Paper presets: hyperparameters as each paper reports them (the section of each paper is cited per entry); tests/test_learn_oracle.py
# checks every field against the values quoted there.
LORADV_EPOCHS = 10  # LoRA-DV Sec. 5.1 / App. A.1.4: 3 rethinking iterations, each of 10 epochs over 32 samples


PRESETS: dict[str, dict] = {
    # SourceJS Sec. 3.5 (Eq. 7): Adam lr 0.02 cosine, lambda 2e-4 toward uniform Gamma_0 = 1/K, 128 unlabeled
    # samples per task, ~300 steps, init 1/K; its 83.10 headline (Sec. 4.3, Table 2) is the layer-wise setting.
    "sourcejs": {"objective": "js", "granularity": "layer", "lr": 0.02, "l2": 2e-4, "l2_target": "uniform",
                 "samples": 128, "steps": 300, "init": -1.0},
    # DivMerge Table 9 (App. D), KL/JS classification, task level: batch 4 x #tasks, 4 epochs, dataset size 200
    # (read as 200 per task: 50 steps of 4 rows per task per epoch, 200 steps), lr 1e-2, init 0.5; JS is its
    # default criterion (Sec. 5.1); no regularizer in its loss (Eq. 4). Alg. 1 writes init 1/|T|: 0.5 when pairwise.
    "divmerge": {"objective": "js", "granularity": "task", "lr": 1e-2, "batch_size": 4, "samples": 200,
                 "steps": 200, "init": 0.5, "l2": 0.0},
    # AdaMerging as DivMerge reproduces it (Table 9, classification, task level): entropy, batch 4 x #tasks,
    # 5 epochs over 200 per task (250 steps), lr 1e-3, init 0.5, no regularizer.
    "adamerging": {"objective": "entropy", "granularity": "task", "lr": 1e-3, "batch_size": 4, "samples": 200,
                   "steps": 250, "init": 0.5, "l2": 0.0},
    # LoRA-DV Sec. 4.4 (Eq. 14: the unsupervised loss is Shannon entropy), Sec. 5.1 and App. A.1.4 (Flan-T5):
    # Adam lr 0.005, 32 calibration samples per task, T = 3 rethinking iterations (Sec. 4.2) of 10 epochs each:
    # 3 x 10 x ceil(32 / 4) = 240 steps with batches of 4.
    "loradv": {"objective": "entropy", "granularity": "spectral", "lr": 0.005, "samples": 32, "batch_size": 4,
               "iterations": 3, "steps": 3 * LORADV_EPOCHS * math.ceil(32 / 4), "l2": 0.0},
}


def apply_preset(params: LearnParams, preset: str | None) -> LearnParams:
    if not preset:
        return params
    if preset not in PRESETS:
        raise MergecoreError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return replace(params, **PRESETS[preset])
