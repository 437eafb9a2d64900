"""Task data files: TSV / CSV / JSONL rows -> (inputs, labels) with a column mapping.

A ``Columns`` mapping names the text columns (one or two fields) and the label column; for
header-less files columns are given by position ("0", "3"). Labels map through ``label_map``
(raw value -> class id), through ``label_names`` (a class name -> its index; other values must be
class ids) or, for regression (``numeric=True``), parse as floats. Every problem a user can fix
raises one-line ``MergecoreError`` naming the file (and row): missing columns, unknown labels,
empty rows, non-UTF-8 bytes, zero examples. Rows are numbered as a spreadsheet shows them (the
header is row 1); JSONL rows count the objects from 1.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergecore.data.tasks import Split, Task
from mergecore.errors import MergecoreError
from mergecore.files import read_json, read_regular_file


@dataclass(frozen=True)
class Columns:
    """Which columns hold the text fields and the label."""

    text: tuple[str, ...] = field(default=("sentence",), metadata={"help": "text column(s), 1 or 2"})
    label: str | None = field(default="label", metadata={"help": "label column (None: unlabeled)"})
    label_map: dict | None = field(default=None, metadata={"help": "raw label -> class id"})
    label_names: tuple[str, ...] = field(default=(), metadata={"help": "class names: a text label maps to its index"})
    numeric: bool = field(default=False, metadata={"help": "labels are numbers (regression)"})
    header: bool = field(default=True, metadata={"help": "first row names the columns"})


MAX_FILE_BYTES = 512 * 2**20  # a task file read whole: GLUE's largest (MNLI train.tsv) is about 300 MiB
MAX_FIELD_CHARS = 16 * 2**20  # one CSV / TSV cell (the csv module's default stops at 128K characters)
_FIELD_LIMIT = threading.Lock()


def _open_text(path: Path) -> str:
    data = read_regular_file(path, MAX_FILE_BYTES, "task file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MergecoreError(f"{path} is not UTF-8 (bad byte at offset {exc.start}); re-save it as UTF-8") from None


def read_rows(path: str | Path, header: bool = True) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows as dicts) of a .tsv/.csv/.jsonl file (positional keys "0", "1", ... without a header)."""
    path = Path(path)
    text = _open_text(path)
    if path.suffix in (".jsonl", ".json"):
        rows = _jsonl(path, text)
        return list(dict.fromkeys(k for r in rows for k in r)), rows
    delim = "\t" if path.suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL  # GLUE TSVs carry raw quotes
    rows = _csv_rows(path, text, delim, quoting)
    if not header:
        width = max((len(r) for r in rows), default=0)
        return [str(i) for i in range(width)], [{str(i): v for i, v in enumerate(r)} for r in rows]
    if not rows:
        raise MergecoreError(f"{path} is empty; give a header row and at least one example")
    names = rows[0]
    return names, [dict(zip(names, r)) for r in rows[1:]]


def _csv_rows(path: Path, text: str, delim: str, quoting: int) -> list[list[str]]:
    """The non-empty rows; a cell over MAX_FIELD_CHARS or a malformed row is one line naming the line."""
    reader = csv.reader(text.splitlines(), delimiter=delim, quoting=quoting)
    with _FIELD_LIMIT:  # the limit is the csv module's global: set and restored by one reader at a time
        before = csv.field_size_limit(MAX_FIELD_CHARS)
        try:
            return [r for r in reader if r]
        except csv.Error as exc:
            why = (f"has a cell over {MAX_FIELD_CHARS} characters" if "field larger" in str(exc)
                   else "is not valid CSV")
            raise MergecoreError(f"{path} line {reader.line_num} {why}; fix the row") from None
        finally:
            csv.field_size_limit(before)


def _jsonl(path: Path, text: str) -> list[dict[str, str]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = read_json(line, f"{path} line {n}")
        except json.JSONDecodeError as exc:
            raise MergecoreError(f"{path} line {n} is not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(obj, dict):
            raise MergecoreError(f"{path} line {n} is not a JSON object; one object per line")
        out.append({k: "" if v is None else str(v) for k, v in obj.items()})
    return out


_NAME = re.compile(r"\w[\w .-]{0,39}")  # what a column name looks like: never a line of some other file


def _shown(names: list[str]) -> str:
    """The columns found, listed only when they look like column names (at most 10): an error never prints a
    line of a file that is not a table (e.g. /etc/passwd named by mistake)."""
    if not names or not all(_NAME.fullmatch(n) for n in names):
        return f"the first row has {len(names)} field(s) that do not look like column names"
    more = f", and {len(names) - 10} more" if len(names) > 10 else ""
    return f"columns: {', '.join(names[:10])}{more}"


def _cut(value: str) -> str:
    """A cell's value as an error shows it: quoted, at most 40 characters."""
    return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."


def _label(raw: str, cols: Columns, where: str) -> float:
    if cols.numeric:
        try:
            return float(raw)
        except ValueError:
            raise MergecoreError(f"{where}: label {_cut(raw)} is not a number; fix the row or the label column") from None
    if cols.label_map is not None:
        if raw not in cols.label_map:
            known = ", ".join(map(str, cols.label_map))
            raise MergecoreError(f"{where}: unknown label {_cut(raw)} (known: {known}); fix the row or the label mapping")
        return int(cols.label_map[raw])
    if raw in cols.label_names:
        return cols.label_names.index(raw)
    try:
        return int(raw)
    except ValueError:
        if cols.label_names:
            raise MergecoreError(f"{where}: label {_cut(raw)} is not one of the labels ({', '.join(cols.label_names)}) "
                                 "nor a class id; fix the row or add the label to the task's labels") from None
        raise MergecoreError(f"{where}: label {_cut(raw)} is not a class id; give a label mapping") from None


def load_split(path: str | Path, cols: Columns, limit: int | None = None, labeled: bool = True) -> Split:
    """A Split from one file; ``limit`` keeps the first rows (files are read in order)."""
    names, rows = read_rows(path, cols.header)
    need = list(cols.text) + ([cols.label] if labeled and cols.label else [])
    if rows:
        missing = [c for c in need if c not in names]
        if missing:
            raise MergecoreError(f"{path}: missing column(s) {', '.join(missing)} ({_shown(names)}); "
                                 "fix the column mapping")
    inputs, labels = [], []
    first = 2 if cols.header and Path(path).suffix not in (".jsonl", ".json") else 1
    for n, row in enumerate(rows[:limit] if limit else rows, first):
        where = f"{path} row {n}"
        fields = tuple((row.get(c) or "").strip() for c in cols.text)
        if any(c not in row for c in need):
            raise MergecoreError(f"{where} has too few columns; fix the row")
        if not any(fields):
            raise MergecoreError(f"{where} has empty text; remove the row or fill it")
        inputs.append(fields)
        if labeled and cols.label:
            labels.append(_label(row[cols.label].strip(), cols, where))
    if not inputs:
        raise MergecoreError(f"{path} holds no examples; give at least one row")
    return Split(tuple(inputs), tuple(labels) if labeled and cols.label else None)


def sample(split: Split, n: int, seed: int) -> Split:
    """n examples drawn without replacement by a seeded generator, kept in file order (n=0: all)."""
    if not n or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    labels = None if split.labels is None else tuple(split.labels[i] for i in idx)
    return Split(tuple(split.inputs[i] for i in idx), labels)


MAX_PROMPT_FIELDS = 16  # placeholders in one prompt: each copies a row's text into every prompt


def check_prompt(task: str, prompt: str, fields: tuple[str, ...]) -> None:
    """Refuse a prompt whose placeholders are not bare column positions ({0}, {1}, ... or {}): no format spec,
    conversion, attribute or index (``{0:>300000000}`` would build a 300-million-character string per row)."""
    cols = ", ".join(f"{{{i}}}={c}" for i, c in enumerate(fields))
    try:
        parsed = list(string.Formatter().parse(prompt))
    except ValueError as exc:
        raise MergecoreError(f"task {task!r}: prompt {_cut(prompt)} is not a valid template ({exc}); use {cols} "
                             "and write {{ and }} for literal braces") from None
    holders = [(p, spec, conv) for _, p, spec, conv in parsed if p is not None]
    if len(holders) > MAX_PROMPT_FIELDS:
        raise MergecoreError(f"task {task!r}: the prompt has {len(holders)} placeholders (limit {MAX_PROMPT_FIELDS}); "
                             "use each column once or twice")
    auto = 0
    for placeholder, spec, conversion in holders:
        shown = "{" + placeholder[:40] + (f"!{conversion}" if conversion else "") + (f":{spec[:20]}" if spec else "") + "}"
        if spec or conversion:
            raise MergecoreError(f"task {task!r}: prompt placeholder {shown} has a format spec or conversion; "
                                 f"use bare placeholders ({cols})")
        key = placeholder
        if key == "":
            key, auto = str(auto), auto + 1
        if not re.fullmatch(r"[0-9]{1,4}", key) or int(key) >= len(fields):
            raise MergecoreError(f"task {task!r}: prompt placeholder {shown} has no column "
                                 f"(columns: {cols}); use only these placeholders")
    try:
        prompt.format(*fields)
    except (ValueError, IndexError) as exc:  # "{} {0}": automatic and manual numbering mixed
        raise MergecoreError(f"task {task!r}: prompt {_cut(prompt)} cannot be filled ({exc}); use {cols}") from None


def _label_columns(name: str, cols: Columns, label_names: tuple[str, ...], metric: str):
    """(columns, label values): regression reads numbers and scores bins by the labels' values;
    classification maps text labels through the label names."""
    if metric == "pearson_spearman":
        try:
            values = tuple(float(v) for v in label_names)
        except ValueError:
            raise MergecoreError(f"task {name!r}: a pearson_spearman task's labels are the scores of its bins "
                                 f"(got {list(label_names)}); give numbers such as [\"0\", \"2.5\", \"5\"]") from None
        return dataclasses.replace(cols, numeric=True), values
    if cols.label_map is None and not cols.numeric and not cols.label_names:
        cols = dataclasses.replace(cols, label_names=tuple(label_names))
    return cols, ()


def _calibration(train: str | Path, cols: Columns) -> Split:
    """The calibration split, with its labels when every row of ``train`` has a valid one (the supervised
    ce objective reads them); unlabeled otherwise, as the unsupervised objectives need."""
    try:
        return load_split(train, cols)
    except MergecoreError:
        return load_split(train, cols, labeled=False)


def file_task(name: str, train: str | Path, evaluation: str | Path, cols: Columns, label_names: tuple[str, ...],
              prompt: str = "{0}", verbalizers: tuple[str, ...] | None = None, metric: str = "accuracy",
              calibration: int = 128, eval_size: int = 0, seed: int = 0) -> Task:
    """A Task from two files (calibration from ``train``, labeled when it can be; evaluation labeled). Text labels map
    through ``label_names``; ``metric="pearson_spearman"`` reads float labels, ``label_names`` being bin values."""
    check_prompt(name, prompt, tuple(cols.text))
    cols, values = _label_columns(name, cols, tuple(label_names), metric)
    calib = sample(_calibration(train, cols), calibration, seed)
    ev = sample(load_split(evaluation, cols), eval_size, seed + 1)
    if cols.label_map is None and not cols.numeric:
        bad = sorted({y for y in ev.labels if not 0 <= y < len(label_names)})
        if bad:
            raise MergecoreError(f"{evaluation}: label ids {bad[:5]} outside 0..{len(label_names) - 1}; "
                                 "fix the labels or the label names")
    return Task(name, tuple(label_names), calib, ev, metric=metric, prompt=prompt,
                verbalizers=tuple(verbalizers or label_names), field_names=tuple(cols.text), label_values=values)


def generative_task(name: str, train: str | Path, evaluation: str | Path, text: tuple[str, ...],
                    reference: str | None = None, prompt: str = "{0}", calibration: int = 128, eval_size: int = 0,
                    seed: int = 0, header: bool = True) -> Task:
    """A generative Task (DivMerge App. B.1): prompts from ``text`` columns, references (for ROUGE-1) from
    ``reference`` when given; calibration prompts from ``train``, evaluation from ``evaluation``."""
    check_prompt(name, prompt, tuple(text))
    calib = sample(load_split(train, Columns(text=text, label=None, header=header), labeled=False), calibration, seed)
    cols = Columns(text=tuple(text) + ((reference,) if reference else ()), label=None, header=header)
    ev = sample(load_split(evaluation, cols, labeled=False), eval_size, seed + 1)
    n = len(text)
    refs = tuple(row[n] for row in ev.inputs) if reference else ()
    return Task(name, (), calib, Split(tuple(row[:n] for row in ev.inputs)), metric="rouge1", prompt=prompt,
                field_names=tuple(text), references=refs)
