"""Shared app plumbing: process-wide resources, sidebar, forms built from mergecore dataclasses.

Everything here is thin: numbers come from mergecore, widgets come from its dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import streamlit as st

from mergecore.adapters import load_adapters
from mergecore.data.sources import TaskSource, load_tasks, record, save_mapping
from mergecore.errors import MergecoreError
from mergecore.files import read_json
from mergecore.forward.workbench import open_workbench
from mergecore.placement import LoadParams
from mergecore.runs.store import default_workspace

# Markdown (and HTML) that text from outside must not form: backslash-escaped wherever it appears; an underscore
# inside a word cannot emphasise, so it stays (adapter_config.json reads as typed)
_ESCAPE = re.compile(r"[\\`*\[\]<>&$~|]|(?<![^\W_])_|_(?![^\W_])")
_LINE_START = re.compile(r"^(\s*)([-+=#>]|\d+(?=[.)]))", re.M)  # lists, headings, quotes, setext underlines
# what remark turns into links or icons even when escaped: http://, www., e-mail addresses, :emoji: / :material/
_AUTOLINK = re.compile(r"(?<=[:@])(?=\S)|(?i:(?<=www)(?=\.))")
JOINER = "\u2060"  # WORD JOINER: invisible, breaks the autolink and shortcode patterns


def plain(text) -> str:
    """Text from outside (URL parameters, adapter and base configs, file contents, task, label and run names,
    paths, and so every MergecoreError message) as markdown that renders exactly that text: no link, image,
    HTML, emphasis, heading, list, emoji or icon. For alerts, captions, subheaders, progress texts and labels."""
    out = _ESCAPE.sub(lambda m: "\\" + m.group(0), str(text))
    out = _LINE_START.sub(lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit() else "\\" + m.group(2)), out)
    return _AUTOLINK.sub(JOINER, out)


def say(kind: str, text, where=None) -> None:
    """One ``st.error`` / ``warning`` / ``info`` / ``success`` / ``caption`` of text that may hold outside text
    (every MergecoreError does: paths, names), shown literally through ``plain``; ``where``: a column or container."""
    where = st if where is None else where
    if kind == "caption":
        where.caption(plain(text))
    else:
        getattr(where, kind)(plain(text), icon="")  # icon="": no leading emoji of the text taken as the icon


@st.cache_resource(show_spinner=False)
def registry(workspace: str):
    """The workers this server starts (and reaps) and the run store they write to."""
    from mergecore.runs.jobs import Workers
    from mergecore.runs.store import RunStore

    return Workers(RunStore(workspace), spare=True)


@st.cache_resource(show_spinner="Loading the base model and adapters...", max_entries=4)
def bench(adapter_dirs: tuple[str, ...], device: str, task_source: tuple = ("demo",), base_model: str = "",
          workspace: str = "", load: tuple = ()):
    """One Workbench per adapter selection, task source and device, shared by all sessions (never mutated)."""
    adapters = load_adapters(list(adapter_dirs), base_model=base_model or None)
    source = tasks_source(task_source, workspace or str(default_workspace()))
    wb = open_workbench(adapters, load_tasks(adapters.names, source), device=device, load=LoadParams(**dict(load)))
    wb.task_source = record(source, wb.tasks.names)  # as the CLI records it: `--run` reuses it
    return wb


def tasks_source(task_source: tuple, workspace: str) -> TaskSource:
    """The page's choice -- ('demo',), ('glue', folder, n_cal, n_eval) or ('files', JSON of one file spec per
    adapter) -- as a TaskSource; a typed mapping is saved once (by content) in the workspace, with relative
    data paths made absolute from the current folder, so the run can record the file."""
    kind = task_source[0]
    if kind == "glue":
        _, folder, n_cal, n_eval = task_source
        return TaskSource("glue", glue_dir=folder or None, calibration=n_cal, eval_size=n_eval)
    if kind == "demo":
        return TaskSource()
    try:
        specs = read_json(task_source[1], "the column mapping")  # typed text: deep nesting is one line
    except json.JSONDecodeError as exc:
        raise MergecoreError(f"the column mapping is not valid JSON ({exc.msg}); give a JSON list") from None
    if isinstance(specs, list):
        specs = [{**s, **{k: str(Path(s[k]).expanduser().absolute()) for k in ("train", "eval")
                          if isinstance(s.get(k), str) and s[k].strip()}} if isinstance(s, dict) else s for s in specs]
    return TaskSource("files", mapping=str(save_mapping(specs, Path(workspace) / "task-mappings")))


def sidebar() -> None:
    with st.sidebar:
        st.text_input("Workspace folder", value=str(default_workspace()), key="workspace",
                      help="runs are stored in runs.sqlite inside this folder")
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        st.selectbox("Device", devices, key="device")
        st.caption("Adapters: " + ("demo kit" if not st.session_state.get("adapter_dirs") else
                                  f"{len(st.session_state['adapter_dirs'])} folders"))


def current_registry():
    """The workers and run store of the sidebar's workspace; when the store cannot be opened (corrupt, read-only,
    full), its one-line error and the page stops: pages that need no store (Workspace) never call this."""
    try:
        return registry(st.session_state.get("workspace") or str(default_workspace()))
    except MergecoreError as exc:
        say("error", exc)
        st.stop()


def adapter_dirs() -> tuple[str, ...]:
    from mergecore.demo.kit import demo_adapter_dirs

    return tuple(st.session_state.get("adapter_dirs") or [str(p) for p in demo_adapter_dirs()])


def bench_spec(bench):
    """How a worker process reopens the workbench this page shows (same adapters, base, tasks, device)."""
    from mergecore.runs.jobs import BenchSpec

    return BenchSpec(adapter_dirs(), dict(bench.task_source or {"kind": "demo"}), st.session_state.get("base_model", ""),
                     st.session_state.get("device", "cpu"), dict(st.session_state.get("load_params", ())))


def current_bench():
    """The workbench for the selected adapters and tasks, or None after showing the error."""
    try:
        return bench(adapter_dirs(), st.session_state.get("device", "cpu"),
                     st.session_state.get("task_source", ("demo",)), st.session_state.get("base_model", ""),
                     st.session_state.get("workspace") or str(default_workspace()), st.session_state.get("load_params", ()))
    except MergecoreError as exc:
        say("error", exc)
        return None


def job_page(title: str):
    """Title, workbench and workers of a page that starts runs (Learn, Merge); a spare worker is started
    ahead for the next Start. Stops the page after the error when the workbench cannot load."""
    st.title(title)
    bench = current_bench()
    if bench is None:
        st.stop()
    workers = current_registry()
    workers.ensure_spare()
    return bench, workers


def analysis_inputs(title: str, need_runs: bool = True):
    """Title, workbench, run store and {run id: label} of the finished runs the analysis pages offer.

    Stops the page (after an error or a hint) when there is nothing to analyse."""
    from mergecore.runs.store import merge_runs

    st.title(title)
    bench = current_bench()
    if bench is None:
        st.stop()
    store = current_registry().store
    runs = {r.id: r.label for r in merge_runs(store)}
    if need_runs and not runs:
        st.info("No finished run yet: learn or merge on the Learn page (or `python -m mergecore learn`), then come back.")
        st.stop()
    return bench, store, runs


def parse_optional_number(text: str, none_label: str, kind=float):
    """A form's text for an ``X | None`` field: the none label (e.g. '1/K') or empty -> None, else a finite
    number ('0.5', '1/3'; a whole one for an int field); raises ValueError on anything else (1e999, nan, 1/0)."""
    raw = text.strip()
    if not raw or raw.lower() in {none_label.lower(), "none"}:
        return None
    parts = [float(x) for x in raw.split("/", 1)]  # floats: '1e999999999' is inf at once (never 10**N digits)
    value = parts[0] / parts[1] if len(parts) == 2 else parts[0]
    if not all(map(math.isfinite, [*parts, value])) or (kind is int and value != int(value)):
        raise ValueError(raw)
    return kind(value)


def _optional_number(f, current, key: str, label: str, helptext: str | None, unread: list):
    none_label = f.metadata.get("none_label", "none")
    shown = none_label if current is None else f"{current:.12g}"
    text = st.text_input(label, value=shown, key=key, help=f"{helptext or ''} -- type {none_label} or a number".strip())
    kind = int if isinstance(f.default, int) and not isinstance(f.default, bool) else float
    try:
        return parse_optional_number(text, none_label, kind)
    except (ValueError, ZeroDivisionError, OverflowError):
        say("error", f"{label}: give a finite number or {none_label} (got {text!r}); nothing starts until it is one")
        unread.append(label)
        return current


def _field_widget(f, current, key: str, unread: list):
    """One widget for one dataclass field, labelled from its metadata (choices -> selectbox, X | None -> text
    with the field's none label, bool -> checkbox, numbers -> number input)."""
    label, helptext = f.metadata.get("label") or f.name, f.metadata.get("help")
    none_label = f.metadata.get("none_label")
    if f.metadata.get("choices"):
        choices, names = list(f.metadata["choices"]), dict(f.metadata.get("choice_labels") or {})
        if none_label:  # an optional choice: None is offered first, under its label
            choices, names[None] = [None, *choices], none_label
        return st.selectbox(label, choices, index=choices.index(current), help=helptext, key=key,
                            format_func=lambda c: names.get(c, c))
    if none_label and "str" in str(f.type):  # optional text: empty or the none label -> None
        text = st.text_input(label, value=current or "", help=f"{helptext or ''} (empty: {none_label})", key=key)
        return None if text.strip().lower() in {"", none_label.lower()} else text.strip()
    if none_label:
        return _optional_number(f, current, key, label, helptext, unread)
    if isinstance(current, bool):
        return st.checkbox(label, value=current, help=helptext, key=key)
    if isinstance(current, int):
        return int(st.number_input(label, value=current, step=1, help=helptext, key=key))
    if isinstance(current, float):
        return float(st.number_input(label, value=current, format="%g", help=helptext, key=key))
    return st.text_input(label, value=str(current), help=helptext, key=key)


def _field_grid(fields, values, prefix: str, out: dict, unread: list) -> None:
    if not fields:
        return
    cols = st.columns(3)
    for i, f in enumerate(fields):
        with cols[i % 3]:
            out[f.name] = _field_widget(f, getattr(values, f.name), f"{prefix}_{f.name}", unread)


def dataclass_form(cls, prefix: str, values=None, skip=(), unread: list | None = None):
    """Widgets for a frozen params dataclass, labelled and explained from its field metadata: the main fields
    first, the ``advanced`` ones folded under "More settings"; returns an instance of ``cls``. A field whose text
    is no number shows its error and keeps its value; its label is appended to ``unread`` (start nothing then)."""
    values, unread = values or cls(), [] if unread is None else unread
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    out: dict = {}
    _field_grid([f for f in fields if not f.metadata.get("advanced")], values, prefix, out, unread)
    folded = [f for f in fields if f.metadata.get("advanced")]
    if folded:
        with st.expander("More settings", expanded=False):
            _field_grid(folded, values, prefix, out, unread)
    return dataclasses.replace(values, **out)


def _leave_pages_directory_mode() -> None:
    """Deep links on a fresh server: Streamlit first runs ``pages/x.py`` in its old pages-folder mode
    (no app.py, so no sidebar or navigation). Switch that mode off once and rerun through app.py,
    which keeps the URL's page and query parameters. Uses Streamlit's PagesManager flag (1.67)."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_pages_directory_mode()
