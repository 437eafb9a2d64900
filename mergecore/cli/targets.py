"""Where a command may write its folder (``--out``): the one rule of ``files.check_target``, applied before
any work is done, with the workspace and the run's inputs as the flags name them protected (``runs.folder
.run_inputs``): adapter folders, task mapping and files, a GLUE folder, a local base model, a ``--run`` folder."""

from __future__ import annotations

from pathlib import Path

from mergecore.files import check_target
from mergecore.forward.spec import RunSpec
from mergecore.runs.folder import is_local, run_inputs
from mergecore.runs.store import default_workspace


def protected(args, spec: RunSpec) -> list[tuple[str, Path]]:
    """(label, path) pairs no ``--out`` may be or hold: the workspace and every local input of the run ``spec``
    (the flags' or a ``--run``'s own)."""
    keep = run_inputs(args.workspace or default_workspace(), [a.source for a in spec.adapters],
                      spec.to_record().get("task_source"))
    named = (("the base model folder", spec.base_path), ("the base model folder", spec.base_model),
             ("the run folder", getattr(args, "run", None)))  # --run: an id or a run folder
    keep += [(label, Path(path).expanduser()) for label, path in named if is_local(path)]
    return keep


def check_out(args, spec: RunSpec, what: str) -> Path | None:
    """``--out`` resolved, or one line why it may not be written (before any model is loaded)."""
    if not args.out:
        return None
    return check_target(args.out, args.force, protected(args, spec), what)
