"""The app's state: process-wide resources (workers and store, workbenches), the sidebar, the page preambles."""

from __future__ import annotations

import streamlit as st

from mergecore.data.sources import TaskSource
from mergecore.errors import MergecoreError
from mergecore.forward.spec import RunSpec
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
def bench(spec: RunSpec):
    """One Workbench per RunSpec (adapters, tasks, base and its loading, device), shared by all sessions (never
    mutated); it carries its resolved spec (``bench.spec``), which a worker reopens and a run records."""
    return spec.open()


def page_spec(dirs, tasks: TaskSource, base_model: str, load: LoadParams) -> RunSpec:
    """The RunSpec of the Workspace page's fields (no folders: the demo kit) on the sidebar's device."""
    from mergecore.demo.kit import demo_adapter_dirs

    return RunSpec.of(dirs or demo_adapter_dirs(), tasks=tasks, base_model=base_model, load=load,
                      device=st.session_state.get("device", "cpu"))


def current_spec() -> RunSpec:
    """The RunSpec the Workspace page chose (the demo kit until then)."""
    ss = st.session_state
    return page_spec(ss.get("adapter_dirs"), ss.get("task_source") or TaskSource(), ss.get("base_model", ""),
                     LoadParams(**dict(ss.get("load_params", ()))))


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


def current_bench():
    """The workbench for the selected adapters and tasks, or None after showing the error."""
    try:
        return bench(current_spec())
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
