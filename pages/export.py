"""Export: pick a finished run, write it as a PEFT adapter folder (or full weights), download it as a zip."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from mergecore.errors import MergecoreError
from mergecore.export.params import MODES, ExportParams
from mergecore.export.writer import export_run
from mergecore.files import safe_name, zip_folder
from mergecore.merged import is_dense
from mergecore.runs.folder import load_run
from mergecore.runs.store import merge_runs
from pages.ui.state import current_bench, current_registry
from pages.ui.text import say

LABELS = {"exact": "Exact adapter (rank = sum of source ranks)", "compressed": "Compressed adapter (rank r, SVD)",
          "full": "Full merged model weights"}

st.title("Export a merged adapter")
bench = current_bench()
if bench is None:
    st.stop()
store = current_registry().store
runs = merge_runs(store)
if not runs:
    st.info("No finished runs in this workspace yet: learn coefficients on the Learn page or store a static merge.")
    st.stop()

by_label = {f"{r.name} · {r.kind} · {r.id}": r.id for r in runs}
label = st.selectbox("Run", list(by_label), key="export_run")
try:
    run = load_run(by_label[label], store, bench.adapters)
except MergecoreError as exc:
    say("error", exc)
    st.stop()

dense = is_dense(run.merge)
modes = [m for m in MODES if not (dense and m == "exact")]
if dense:
    st.caption("This run is dense (element-wise method): it has no exact LoRA form.")
mode = st.radio("Form", modes, format_func=LABELS.get, key="export_mode", horizontal=True)
cols = st.columns(3)
rank = int(cols[0].number_input("Rank r", min_value=1, value=8, step=1, key="export_rank",
                                disabled=mode != "compressed", help=ExportParams.__dataclass_fields__["rank"].metadata["help"]))
head = cols[1].selectbox("Head carried by the adapter", bench.tasks.names, key="export_head",
                         help="every task's head is saved under heads/; this one is modules_to_save")
overwrite = cols[2].checkbox("Replace an existing export", key="export_force")
suffix = f"-r{rank}" if mode == "compressed" else ""
target = Path(store.workspace) / "exports" / f"{safe_name(run.name)}-{safe_name(run.id)}-{mode}{suffix}"
say("caption", f"Target folder: {target}")

if st.button("Export", type="primary", key="export_button"):
    try:
        with st.spinner("Writing the export..."):
            res = export_run(bench, run, target, ExportParams(mode=mode, rank=rank, head=head, overwrite=overwrite))
        st.session_state["export_path"] = str(res.path)
    except MergecoreError as exc:
        say("error", exc)

path = Path(st.session_state.get("export_path") or "")
if st.session_state.get("export_path") and (path / "merge_card.json").is_file():
    card = json.loads((path / "merge_card.json").read_text())
    ex = card["export"]
    say("success", f"Exported run {card['run']['name']} ({ex['mode']}) to {path}")
    st.download_button("Download zip", data=zip_folder(path), file_name=f"{path.name}.zip",
                       mime="application/zip", on_click="ignore", key="export_download", type="primary")
    if "energy" in ex:
        m = st.columns(3)
        m[0].metric("Retained energy (overall)", f"{ex['energy']['overall']:.4f}")
        m[1].metric("Worst module", f"{ex['energy']['min']:.4f}")
        m[2].metric("Largest label-probability change", f"{ex['probability_change']['max']:.4g}")
        st.dataframe(pd.Series(ex["energy"]["per_module"], name="retained energy").to_frame(), key="energy_table")
    st.subheader("Load it")
    st.code(card["snippet"], language="python")
    st.subheader("Merge card")
    st.json(card, expanded=False)
