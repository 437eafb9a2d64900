"""The app's state: process-wide resources (workers and store, workbenches), the sidebar, the page preambles."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from mergecore.adapters import load_adapters
from mergecore.data.sources import TaskSource, load_tasks, record, save_mapping
from mergecore.errors import MergecoreError
from mergecore.files import read_json
from mergecore.forward.workbench import open_workbench
from mergecore.placement import LoadParams
from mergecore.runs.store import default_workspace
from pages.ui.text import say

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
