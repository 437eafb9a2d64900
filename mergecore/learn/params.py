"""What a learning run is given: LearnParams (paper defaults; the CLI flags, the app's form and the merge card
derive from it) and the papers' presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mergecore.errors import MergecoreError
from mergecore.fields import check_number, param
from mergecore.forward.coefs import coefficient_transform
from mergecore.learn.objectives import OBJECTIVES, get_objective

GRANULARITIES = ("task", "layer", "block", "spectral")


L2_TARGETS = ("uniform", "start")


GENERATIVE_OBJECTIVES = ("js", "kl")  # token-level divergences on the expert's outputs (generative tasks)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


OBJECTIVE_LABELS = {name: f"{name}: {o.summary}" for name, o in OBJECTIVES.items()}
GRANULARITY_LABELS = {"task": "task-wise: one coefficient per task",
                      "layer": "layer-wise: one per task and LoRA module",
                      "block": "block-wise: one per task and transformer block",
                      "spectral": "spectral: a gain per singular value (LoRA-DV)"}


@dataclass(frozen=True)
class LearnParams:
    """Hyperparameters of coefficient learning; defaults from SourceJS (lr 0.02 cosine, lambda 2e-4, 128 samples)."""

    objective: str = param("js", "Objective",
        "what the merge coefficients minimise on unlabeled inputs: js = Jensen-Shannon divergence between the merged "
        "model's and each task expert's predictions (SourceJS, DivMerge: anchored to the experts); kl / rkl = KL "
        "divergence to / from the expert (DivMerge); entropy = the merged model's prediction entropy (AdaMerging: "
        "no reference, can become confidently wrong); ce = cross-entropy on a few labels (supervised reference)",
        choices=tuple(OBJECTIVES), choice_labels=OBJECTIVE_LABELS)
    granularity: str = param("task", "Coefficient granularity",
        "task-wise: one coefficient per task (K numbers); layer-wise: one per task and LoRA module (SourceJS Sec. 3.4, "
        "its 83.10 headline); block-wise: one per task and transformer block; spectral: a gain per singular value "
        "of the merged update (LoRA-DV's spectral rethinking)",
        choices=GRANULARITIES, choice_labels=GRANULARITY_LABELS)
    steps: int = param(
        150,
        "Optimisation steps", "Adam steps over the calibration batches (SourceJS: ~300; DivMerge: 4 epochs)")
    lr: float = param(
        0.02,
        "Learning rate (Adam, cosine schedule)", "Adam's step size, decayed to 0 by a cosine schedule (SourceJS: 0.02; "
        "DivMerge: 0.01; AdaMerging: 0.001; LoRA-DV: 0.005)")
    l2: float = param(
        2e-4,
        "L2 pull toward uniform (lambda)", "weight lambda of the penalty lambda ||Gamma - Gamma_0||^2 that keeps "
        "coefficients from extreme values (SourceJS Eq. 7: 2e-4; 0 = none, as DivMerge and AdaMerging)")
    l2_target: str = param("uniform", "L2 pull target (Gamma_0)",
        "'uniform' = 1/K for every coefficient (SourceJS Eq. 7), 'start' = the start point "
        "(a stored run's coefficients or the start value); spectral runs always pull the gains toward 1 (the start "
        "merge)", advanced=True, choices=L2_TARGETS)
    init: float | None = param(
        None,
        "Start value of every coefficient", "1/K = uniform average of the K experts (SourceJS, DivMerge Alg. 1), or "
        "a number (DivMerge / AdaMerging Table 9: 0.5)", none_label="1/K")
    samples: int = param(
        128,
        "Calibration examples per task", "unlabeled inputs per task the coefficients are learned on "
        "(SourceJS: 128; DivMerge: 200; LoRA-DV: 32)")
    batch_size: int = param(
        4,
        "Batch size per task", "examples of each task in every step (DivMerge: 4 x number of tasks)")
    labeled: int = param(
        64,
        "Labeled examples per task (ce only)", "labeled examples per task for the supervised cross-entropy objective",
        advanced=True)
    clamp: bool = param(
        False,
        "Clamp coefficients to [0, 1]", "project the coefficients into [0, 1] in the forward", advanced=True)
    softmax: bool = param(
        False,
        "Softmax over tasks", "normalise the coefficients with a softmax over tasks (they sum to 1)", advanced=True)
    eval_every: int = param(
        50,
        "Evaluate every N steps", "score, confidence and confidently-wrong share on held-out examples every N steps "
        "(the collapse curves; 0 = never)", advanced=True)
    eval_limit: int = param(
        100,
        "Evaluation examples per task", "held-out examples per task for the periodic evaluation", advanced=True)
    seed: int = param(0, "Seed", "seed of the batch sampler", advanced=True)
    precision: str = param("auto", "Precision",
        "auto: TF32 matmuls on CUDA, float32 on CPU; bf16: bf16 autocast on CUDA "
        "(coefficients and losses stay float32)",
        advanced=True, choices=("auto", "fp32", "bf16"))
    iterations: int = param(
        3,
        "Rethinking iterations T (spectral)", "spectral only: LoRA-DV's rethinking iterations (Sec. 4.2: T = 3)",
        advanced=True)
    start: str = param(
        "uniform",
        "Start point", "'uniform', a stored run id, or a static method name (spectral starts from its merge)",
        advanced=True)

    def validate(self) -> "LearnParams":
        """One line for the first bad field (its flag and valid range); the CLI runs it before loading anything,
        the app's runs (``Workers.start_learning``, ``run_learning``) before starting."""
        get_objective(self.objective)
        if self.granularity not in GRANULARITIES:
            raise MergecoreError(f"unknown granularity {self.granularity!r}; valid: {', '.join(GRANULARITIES)}")
        for name in ("steps", "samples", "batch_size", "labeled", "eval_limit", "iterations"):
            check_number(name, getattr(self, name), _flag(name), 1, whole=True)
        check_number("eval_every", self.eval_every, "--eval-every", 0, whole=True)  # 0 = never
        check_number("seed", self.seed, "--seed", 0, 2**63 - 1, whole=True)
        check_number("lr", self.lr, "--lr", 0, above=True)
        check_number("l2", self.l2, "--l2", 0)  # 0 = no pull
        if self.l2_target not in L2_TARGETS:
            raise MergecoreError(f"unknown l2_target {self.l2_target!r}; valid: {', '.join(L2_TARGETS)}")
        coefficient_transform(self.clamp, self.softmax)
        if self.init is not None and not (isinstance(self.init, (int, float)) and math.isfinite(self.init)):
            raise MergecoreError(f"init must be a finite number or None for 1/K (got {self.init}); set --init to a "
                                 "number or 1/K")
        return self

    def start_value(self, num_tasks: int) -> float:
        return 1.0 / num_tasks if self.init is None else self.init


# Paper presets: hyperparameters as each paper reports them (the section of each paper is cited per entry); tests/test_learn_oracle.py
# checks every field against the values quoted there.
LORADV_EPOCHS = 10  # LoRA-DV Sec. 5.1 / App. A.1.4: 3 rethinking iterations, each of 10 epochs over 32 samples


PRESETS: dict[str, dict] = {
    # SourceJS Sec. 3.5 (Eq. 7): Adam lr 0.02 cosine, lambda 2e-4 toward uniform Gamma_0 = 1/K, 128 unlabeled
    # samples per task, ~300 steps, init 1/K; its 83.10 headline (Sec. 4.3, Table 2) is the layer-wise setting.
    "sourcejs": {"objective": "js", "granularity": "layer", "lr": 0.02, "l2": 2e-4, "l2_target": "uniform",
                 "samples": 128, "steps": 300, "init": None},
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


PRESET_TITLES: dict[str, str] = {
    "sourcejs": "SourceJS (JS, layer-wise, Sec. 3.5)",
    "divmerge": "DivMerge (JS, task-wise, Table 9)",
    "adamerging": "AdaMerging as DivMerge runs it (entropy, Table 9)",
    "loradv": "LoRA-DV (entropy, spectral, Sec. 4.4)",
}
assert set(PRESET_TITLES) == set(PRESETS), "every preset has a title"


def apply_preset(params: LearnParams, preset: str | None) -> LearnParams:
    if not preset:
        return params
    if preset not in PRESETS:
        raise MergecoreError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return replace(params, **PRESETS[preset])
