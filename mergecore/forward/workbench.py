"""Workbench: adapters + tasks + one MergeModel + reader, with inputs tokenized once.

Adapter k is the expert of task k. Every consumer (learner, evaluation, analysis, CLI, app)
works on a Workbench, so the model is built and the data encoded once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mergecore.adapters import AdapterSet
from mergecore.bases import family_of_adapters, load_base
from mergecore.data.tasks import TaskSet
from mergecore.errors import MergecoreError
from mergecore.forward.coefs import FixedCoefs, RowRouting
from mergecore.forward.generative import Generator, GenParams
from mergecore.forward.model import MergeModel
from mergecore.forward.readers import ClassifierReader, Encoded, Reader
from mergecore.forward.verbalizer import make_reader
from mergecore.placement import LoadParams


@dataclass
class Workbench:
    adapters: AdapterSet
    tasks: TaskSet
    model: MergeModel
    reader: Reader  # ClassifierReader, Seq2SeqReader or CausalReader
    base_name: str = ""
    gen_params: GenParams = field(default_factory=GenParams)  # generative tasks: decoding and caching
    load: LoadParams = field(default_factory=LoadParams)  # the base's dtype, quantization and device map
    spec: Any = None  # the forward.spec.RunSpec it was opened from (resolved), recorded in run configs; None: opened
    # directly from an AdapterSet and a TaskSet
    baselines: dict[str, dict[str, float]] | None = field(default=None, repr=False)  # pre-trained / experts /
    # uniform scores, filled once by ``runs.runner.cached_baselines``
    _encoded: dict = field(default_factory=dict, repr=False)  # (task, split, limit) -> Encoded
    _generator: object = field(default=None, repr=False)  # built on first use (generative tasks)

    def __post_init__(self):
        if len(self.adapters) != len(self.tasks):
            raise MergecoreError(
                f"{len(self.adapters)} adapters but {len(self.tasks)} tasks; give one task per adapter, in the same order"
            )
        for k, task in enumerate(self.tasks):
            if self.model.num_labels and self.model.num_labels[k] != task.num_labels:
                raise MergecoreError(
                    f"adapter {self.adapters.names[k]} has a {self.model.num_labels[k]}-way head but task "
                    f"{task.name} has {task.num_labels} labels; pair each adapter with its own task"
                )

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_modules(self) -> int:
        return len(self.model.layers)

    @property
    def family(self) -> str:
        """The model family: 'classifier', 'seq2seq' or 'causal' (the reader's)."""
        return self.reader.family

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encoded(self, k: int, split: str, limit: int | None = None) -> Encoded:
        key = (k, split, limit)
        if key not in self._encoded:
            data = getattr(self.tasks[k], split)
            inputs = data.inputs if limit is None else data.inputs[:limit]
            self._encoded[key] = self.reader.encode(inputs)
        return self._encoded[key]

    def uniform(self, value: float | None = None) -> FixedCoefs:
        c = 1.0 / self.num_tasks if value is None else value
        return FixedCoefs(torch.full((self.num_modules, self.num_tasks), c))

    def pretrained(self) -> FixedCoefs:
        return self.uniform(0.0)

    def routing(self) -> RowRouting:
        """Each row to its own task's expert: every expert's predictions in one pass."""
        return RowRouting(self.model.slot, self.num_tasks)

    def expert(self, j: int) -> FixedCoefs:
        """Expert j alone on every row (one-hot coefficients on every module)."""
        onehot = torch.zeros(self.num_modules, self.num_tasks)
        onehot[:, j] = 1.0
        return FixedCoefs(onehot)

    @property
    def generator(self):
        """Greedy decoding and teacher forcing on this MergeModel (generative tasks; seq2seq / causal only)."""
        if self._generator is None:
            self._generator = Generator(self.model, self.reader.family, self.reader.tokenizer,
                                        max_length=getattr(self.reader, "max_length", 256))
        return self._generator

    @property
    def label_tasks(self) -> list[int]:
        """Indices of the tasks read as label distributions (all but generative tasks)."""
        return [k for k, t in enumerate(self.tasks) if not t.generative]

    @torch.no_grad()
    def predict(self, source, split: str = "evaluation", limit: int | None = None,
                max_rows: int = 256) -> list[torch.Tensor | None]:
        """Label probabilities (n_k, C_k) of every label task under ``source``, all tasks mixed in
        chunks; None in a generative task's place."""
        parts = []
        for k in self.label_tasks:
            enc = self.encoded(k, split, limit)
            for start in range(0, len(enc), max_rows):
                parts.append((k, enc, torch.arange(start, min(start + max_rows, len(enc)))))
        outs: list[list[torch.Tensor]] = [[] for _ in range(self.num_tasks)]
        self.model.set_source(source)
        for chunk in _chunk(parts, max_rows):
            segments, inputs = self.reader.batch(chunk, self.device)
            for (k, _, _), logits in zip(chunk, self.reader.label_logits(self.model, segments, inputs)):
                outs[k].append(torch.softmax(logits, -1).cpu())
        return [torch.cat(o) if o else None for o in outs]


def _chunk(parts, max_rows: int):
    """Group (task, enc, idx) parts into batches of at most ~max_rows rows, keeping task order."""
    batch, rows = [], 0
    for part in parts:
        if batch and rows + len(part[2]) > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(part)
        rows += len(part[2])
    if batch:
        yield batch


def open_workbench(adapters: AdapterSet, tasks: TaskSet, device: str | None = None,
                   trust_remote_code: bool = False, base_model: str | None = None,
                   family: str | None = None, base_path: str | None = None,
                   load: LoadParams | None = None, spec: Any = None) -> Workbench:
    """Load the base (in ``load``'s dtype, quantization and device map), wrap it with the adapters, pick the
    reader of the model family (classifier heads, seq2seq or causal verbalizers), and pair adapters with tasks.
    ``spec``: the RunSpec this bench is opened from (``RunSpec.open`` passes it), kept as ``bench.spec``."""
    name = base_model or adapters.base_model
    if not name and not base_path:
        raise MergecoreError("the adapters name no base model; pass --base-model PATH_OR_HUB_ID")
    family = family or family_of_adapters(adapters)
    load, where = (load or LoadParams()).validate(), resolve_device(device)
    heads = tuple(sorted({h for a in adapters.adapters for h in a.head_modules}))
    model, tokenizer, family = load_base(name or base_path, family, trust_remote_code, base_path, load=load,
                                         device=where, keep=heads)
    mm = MergeModel(model, adapters, with_heads=family == "classifier")
    if not load.placed:  # a quantized or device-mapped base was placed by transformers at load time
        mm = mm.to(where)
    if family == "classifier":
        return Workbench(adapters, tasks, mm, ClassifierReader(tokenizer), base_name=name, load=load, spec=spec)
    reader = make_reader(family, tasks, tokenizer, model.config, max_length=256)
    return Workbench(adapters, tasks, mm, reader, base_name=name or base_path, load=load, spec=spec)


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(device: str | None) -> torch.device:
    """The torch device ``device`` names (auto: CUDA when visible, else the CPU), checked against what this
    torch has (CUDA and its device count, MPS); anything else is one line naming the valid devices."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        where = torch.device(str(device).strip().lower())
    except (RuntimeError, ValueError, TypeError):
        where = None
    if where is None or where.type not in ("cpu", "cuda", "mps") or (where.type != "cuda" and where.index):
        raise MergecoreError(f"unknown device {device!r}; valid: {DEVICES}")
    if where.type == "cuda" and not torch.cuda.is_available():
        raise MergecoreError(f"device {device!r} asked for but no CUDA GPU is visible; use --device cpu")
    if where.type == "cuda" and (where.index or 0) >= torch.cuda.device_count():
        raise MergecoreError(f"device {device!r} does not exist: torch sees {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}; pick one of them")
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise MergecoreError(f"device {device!r} asked for but MPS is not available here; use --device cpu")
    return where
