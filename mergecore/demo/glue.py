"""The GLUE preset: the committed MiniLM GLUE experts + GLUE tasks from a local folder or ``datasets``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mergecore.adapters import load_adapters
from mergecore.data.glue import GLUE_TASKS, GlueParams, load_glue
from mergecore.data.tasks import TaskSet
from mergecore.forward.workbench import open_workbench
from mergecore.placement import LoadParams

ADAPTER_DIR = Path(__file__).parent / "glue-minilm"  # MiniLM + heads, all 8 tasks (scripts/study/train_glue.py)
SMOLLM_DIR = Path(__file__).parent / "glue-smollm2"  # SmolLM2 verbalizers, some tasks (scripts/study/train_smollm.py)


def committed(folder: Path) -> list[Path]:
    """The adapter folders present under ``folder``, in GLUE order."""
    return [folder / n for n in GLUE_TASKS if (folder / n / "adapter_model.safetensors").is_file()]


def glue_adapter_dirs(names: list[str] | None = None, folder: Path = ADAPTER_DIR) -> list[Path]:
    """``folder/<task>`` for each task (all 8 GLUE tasks by default)."""
    return [Path(folder) / n for n in (names or GLUE_TASKS)]


def glue_taskset(source, params: GlueParams = GlueParams(), names: list[str] | None = None, eval_seed: int = 0):
    """GLUE tasks with calibration drawn with ``params.seed`` and the evaluation sample fixed by ``eval_seed``
    (so runs with different seeds are scored on the same rows)."""
    tasks = load_glue(names or list(GLUE_TASKS), source, params)
    if params.seed == eval_seed:
        return tasks
    fixed = load_glue(names or list(GLUE_TASKS), source, replace(params, seed=eval_seed))
    return TaskSet(tuple(replace(t, evaluation=f.evaluation) for t, f in zip(tasks, fixed)))


def glue_workbench(source, params: GlueParams = GlueParams(), names: list[str] | None = None, device: str | None = None,
                   folder: Path = ADAPTER_DIR, load: LoadParams | None = None):
    """Workbench over the GLUE experts in ``folder`` (default the committed MiniLM ones; all 8 tasks, or a subset),
    on ``device`` with the base loaded as ``load`` says (e.g. ``LoadParams(dtype="bfloat16")``)."""
    names = names or list(GLUE_TASKS)
    return open_workbench(load_adapters(glue_adapter_dirs(names, folder)), glue_taskset(source, params, names),
                          device=device, load=load)
