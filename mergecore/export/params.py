"""What an export is asked for (ExportParams: the CLI flags and the app's form derive from it) and what it
returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mergecore.adapters import AdapterSet
from mergecore.data.tasks import TaskSet
from mergecore.errors import MergecoreError
from mergecore.merges.base import check_number

MODES = ("exact", "compressed", "full")


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
