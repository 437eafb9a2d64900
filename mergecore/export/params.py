"""What an export is asked for (ExportParams: the CLI flags and the app's form derive from it) and what it
returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergecore.adapters import AdapterSet
from mergecore.data.tasks import TaskSet
from mergecore.errors import MergecoreError
from mergecore.fields import check_number, param

MODES = ("exact", "compressed", "full")


@dataclass(frozen=True)
class ExportParams:
    """What to write; defaults give the exact adapter with the first task's head."""

    mode: str = param("exact", "Export mode", "exact (rank = sum of source ranks), compressed (rank r by truncated "
                      "SVD) or full (merged model weights)", choices=MODES)
    rank: int = param(8, "Rank (compressed)", "rank r of the compressed adapter (compressed mode only)")
    head: str = param("", "Head of task", "task whose head the adapter carries (modules_to_save); empty = the first task")
    samples: int = param(128, "Calibration examples per task", "calibration examples per task for the "
                         "probability-change report (compressed mode)")
    overwrite: bool = param(False, "Replace an existing folder", "replace an existing target folder")

    def validate(self) -> "ExportParams":
        if self.mode not in MODES:
            raise MergecoreError(f"unknown export mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.mode == "compressed":  # the rank only matters when compressing
            check_number("rank", self.rank, "--rank (compressed export)", 1, whole=True)
        check_number("samples", self.samples, "--samples", 1, whole=True)
        return self


@dataclass(frozen=True)
class ExportResult:
    path: Path
    card: dict
    files: list[str]


@dataclass(frozen=True)
class ExportInputs:
    """What an export reads besides the run: the adapters (their factors and saved heads), the tasks (names and
    labels), the model family and the base model's name. No base model: enough for the exact adapter. A
    ``Workbench`` has the same fields and also serves the modes that need the model (compressed, full)."""

    adapters: AdapterSet
    tasks: TaskSet
    family: str  # "classifier" | "seq2seq" | "causal"
    base_name: str
