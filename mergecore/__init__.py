"""mergecore: merge LoRA adapters, learn merge coefficients, and look inside the result.

The public Python API is the handful of names below; the CLI (``mergecore.cli``) and the app (``app.py`` +
``pages/``) are built on the same names. The library never imports streamlit.

    load_adapters(dirs)                      PEFT LoRA adapter folders -> AdapterSet
    load_tasks(names, TaskSource(...))       one task per adapter: demo, GLUE or CSV/TSV/JSONL files
    RunSpec.of(dirs, tasks=...).open()       what a run is made from -> its workbench (recorded by every run)
    open_workbench(adapters, tasks)          base model + adapters + reader, inputs tokenized once
    demo_workbench()                         the embedded offline demo
    run_learning(bench, LearnParams(...))    learned coefficients (task / layer / block-wise, spectral)
    run_static(bench, "ties", params)        a static merge of the registry (METHODS)
    evaluate(bench, source)                  per-task scores of any coefficient source or merge
    compute_lens(name, bench, store, run)    spectra, subspaces, divergence, representation, calibration
    export_run(bench, load_run(...), out)    a PEFT adapter folder (or full weights) + merge card
"""

import logging

# bitsandbytes (optional: --quantize) logs at import, on CPUs with AVX512-BF16, that an optional hub kernel is
# missing and it falls back to its own; peft imports it, so every command would print that line. Quiet it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from mergecore.adapters import AdapterSet, load_adapters  # noqa: E402
from mergecore.analysis.catalog import LENSES, compute_lens
from mergecore.analysis.lenses import LensParams
from mergecore.data.sources import TaskSource, load_tasks
from mergecore.demo.kit import demo_workbench
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportParams
from mergecore.export.writer import export_run
from mergecore.files import __version__
from mergecore.forward.evaluate import evaluate
from mergecore.forward.spec import RunSpec
from mergecore.forward.workbench import Workbench, open_workbench
from mergecore.learn.params import PRESETS, LearnParams, apply_preset
from mergecore.merges import METHODS, get_method, parse_params
from mergecore.runs.folder import load_run
from mergecore.runs.runner import run_learning, run_static
from mergecore.runs.store import RunStore

__all__ = ["__version__", "AdapterSet", "ExportParams", "LENSES", "LearnParams", "LensParams", "METHODS", "MergecoreError", "PRESETS",
           "RunSpec", "RunStore", "TaskSource", "Workbench", "apply_preset", "compute_lens", "demo_workbench", "evaluate",
           "export_run", "get_method", "load_adapters", "load_run", "load_tasks", "open_workbench", "parse_params",
           "run_learning", "run_static"]
