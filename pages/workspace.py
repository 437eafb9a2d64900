"""Workspace: which adapters and tasks are loaded, and whether they can be merged."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from mergecore.errors import MergecoreError
from pages.common import adapter_dirs, current_bench

st.title("Workspace")
st.caption("Pick LoRA adapters of one base model; each adapter is the expert of the task with its name.")

with st.expander("Adapters", expanded=not st.session_state.get("adapter_dirs")):
    text = st.text_area("Adapter folders, one per line (empty: the embedded demo kit)",
                        value="\n".join(st.session_state.get("adapter_dirs") or []), key="adapter_text")
    if st.button("Load adapters", key="load_adapters"):
        dirs = [line.strip() for line in text.splitlines() if line.strip()]
        try:
            from mergecore.adapters import load_adapters
            from mergecore.demo.kit import tasks_for

            if dirs:
                tasks_for(load_adapters(dirs).names)  # validate before switching
            st.session_state["adapter_dirs"] = dirs
            st.rerun()
        except MergecoreError as exc:
            st.error(str(exc))

bench = current_bench()
if bench is None:
    st.stop()

ad = bench.adapters
st.subheader(f"{len(ad)} adapters on {bench.base_name}")
st.dataframe(pd.DataFrame(ad.report()), hide_index=True, key="adapter_table")

st.subheader("Compatibility report")
rows = []
for m in ad.modules:
    out_f, in_f = ad.shape(m)
    rows.append({"module": m, "shape": f"{out_f}x{in_f}",
                 **{a.name: (a.factors[m].rank if m in a.factors else 0) for a in ad.adapters}})
st.success(f"one base model, {len(ad.modules)} LoRA modules, shapes consistent with the base; "
           "rank 0 below means the adapter does not target that module (zero delta).")
st.dataframe(pd.DataFrame(rows), hide_index=True, key="module_table", height=260)

st.subheader("Tasks")
st.dataframe(pd.DataFrame([{
    "task": t.name, "labels": ", ".join(t.label_names), "metric": t.metric, "calibration": len(t.calibration),
    "evaluation": len(t.evaluation), "description": t.description} for t in bench.tasks]),
    hide_index=True, key="task_table")
task = st.selectbox("Preview a task", bench.tasks.names, key="preview_task")
t = bench.tasks.by_name(task)
st.dataframe(pd.DataFrame([{**dict(zip(t.field_names, x)), "label": t.label_names[int(y)]}
                           for x, y in zip(t.evaluation.inputs[:8], t.evaluation.labels[:8])]),
             hide_index=True, key="preview_table")
st.caption(f"{len(adapter_dirs())} adapter folders; loaded once per server and shared by all sessions.")
