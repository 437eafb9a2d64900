"""Collects every cell's outcome and, when the whole matrix ran and passed, writes docs/peft-conformance.md."""

from __future__ import annotations

from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "peft-conformance.md"


class Outcomes:
    def __init__(self):
        self.cells: dict[tuple[str, str], tuple[str, str]] = {}

    def record(self, case: str, family: str, outcome: str, detail: str) -> None:
        self.cells[(case, family)] = (outcome, detail)


_OUTCOMES = Outcomes()


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models: one thread is 3x faster than two threads contending on a 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def conformance() -> Outcomes:
    return _OUTCOMES


def render(cells: dict[tuple[str, str], tuple[str, str]]) -> str:
    from conformance.cases import CASES
    from conformance.families import FAMILIES

    import peft

    fams = list(FAMILIES)
    lines = ["# PEFT conformance: every LoraConfig field x model family", "",
             f"Written by `python -m pytest tests/conformance` (PEFT {peft.__version__}). Adapters are saved by real "
             "PEFT (`get_peft_model`, random non-zero factors, `save_pretrained`) on tiny models built from configs "
             "(MiniLM: the packaged all-MiniLM-L6-v2). Each cell is exactly one of:", "",
             "- **exact** (bound on the largest relative error): mergecore's routed expert k equals PEFT's single-adapter model, "
             "and a task arithmetic merge (weights 0.7, -0.4) exported by mergecore and loaded by plain PEFT, on the "
             "task model class and on the bare model class, equals `W0 + sum_k w_k (merge_and_unload(adapter k) - W0)` "
             "computed by PEFT; tolerance 1e-5;",
             "- **refused**: loading raises one line naming the field (the CLI exits 2 with it); the reasons are "
             "listed below the table;", "- blank: the field does not apply to the family.", "",
             "| field | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    reasons: dict[str, str] = {}
    for case in CASES:
        row = []
        for fam in fams:
            outcome, detail = cells.get((case.name, fam), ("", ""))
            if outcome == "refused":
                reasons.setdefault(case.name, detail.split(": ", 1)[-1])
            row.append(f"exact ({detail})" if outcome == "exact" else outcome)
        lines.append(f"| {case.name} | " + " | ".join(row) + " |")
    lines += ["", "## Why refused (one example message per field)", ""]
    lines += [f"- **{name}**: {why}" for name, why in reasons.items()]
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
    from conformance.test_conformance import CELLS

    done = {(c.name, f.name) for c, f in CELLS}
    if exitstatus == 0 and done and done <= set(_OUTCOMES.cells):
        try:
            DOC.write_text(render(_OUTCOMES.cells))
        except OSError:  # a read-only checkout: the table is still in the test results
            pass
