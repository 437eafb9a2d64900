"""Forms people read: every parameter of LearnParams and of every merge method has a label, help and a place
(main or folded); the app's form shows them so (AppTest), with "1/K" where the start value is unset, never -1;
the CLI's --init takes 1/K; presets carry the papers' names."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from streamlit.testing.v1 import AppTest

from mergecore.cli import build_parser
from mergecore.errors import MergecoreError
from mergecore.export.card import shown_params
from mergecore.learn.params import PRESET_TITLES, PRESETS, LearnParams, apply_preset
from mergecore.merges.registry import METHODS, parse_params

MAIN_LEARN = ["objective", "granularity", "steps", "lr", "l2", "init", "samples", "batch_size"]
LABELS = {"objective": "Objective", "granularity": "Coefficient granularity", "steps": "Optimisation steps",
          "lr": "Learning rate (Adam, cosine schedule)", "init": "Start value of every coefficient"}


def _check_metadata(cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        assert isinstance(meta.get("label"), str) and meta["label"] and meta["label"] != f.name, (cls, f.name)
        assert isinstance(meta.get("help"), str) and len(meta["help"]) > 10, (cls, f.name)
        assert isinstance(meta.get("advanced"), bool), (cls, f.name)
        assert "-1" not in meta["label"] + meta["help"], (cls, f.name)  # no sentinel values
        if meta.get("choices"):
            assert f.default in meta["choices"] or (f.default is None and "none_label" in meta), (cls, f.name)
            assert set(meta.get("choice_labels", {})) <= set(meta["choices"]), (cls, f.name)
        if "none_label" in meta:  # an `X | None` field: None reads as the label, never as a magic number
            assert f.default is None and type(None) in typing.get_args(hints[f.name]), (cls, f.name)


def test_every_learn_parameter_has_a_label_help_and_a_place():
    _check_metadata(LearnParams)
    fields = {f.name: f.metadata for f in dataclasses.fields(LearnParams)}
    assert [n for n, m in fields.items() if not m["advanced"]] == MAIN_LEARN  # the main settings, in order
    assert {n: fields[n]["label"] for n in LABELS} == LABELS  # the browser tests select widgets by these labels
    assert len({m["label"] for m in fields.values()}) == len(fields)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_parameter_has_a_label_help_and_a_place(name):
    cls = METHODS[name].params_cls
    _check_metadata(cls)
    fields = dataclasses.fields(cls)
    assert not fields or any(not f.metadata["advanced"] for f in fields), name  # at least one main setting
    assert len({f.metadata["label"] for f in fields}) == len(fields), name


def test_presets_are_named_by_paper():
    assert list(PRESET_TITLES) == list(PRESETS)
    assert PRESET_TITLES["sourcejs"] == "SourceJS (JS, layer-wise, Sec. 3.5)"
    assert all(PRESET_TITLES[k].split()[0].lower().replace("-", "").startswith(k[:4]) for k in PRESETS)


# ----------------------------------------------------------------------------- init: 1/K, not -1


def test_init_unset_means_one_over_k():
    p = LearnParams()
    assert p.init is None and p.start_value(4) == 0.25 and p.validate() is p
    assert apply_preset(p, "sourcejs").init is None and apply_preset(p, "divmerge").init == 0.5
    assert LearnParams(init=-0.5).start_value(4) == -0.5  # a number is a number: no sentinel
    with pytest.raises(MergecoreError, match=r"^init must be a finite number or None for 1/K \(got nan\); set --init to a number or 1/K$"):
        LearnParams(init=float("nan")).validate()


@pytest.mark.parametrize("argv, want", [([], 0.5), (["--init", "1/K"], None), (["--init", "1/k"], None),
                                        (["--init", "0.25"], 0.25), (["--init", "none"], None)])
def test_cli_init_takes_one_over_k_over_a_preset(argv, want):
    from mergecore.cli.flags import dataclass_from_args

    args = build_parser().parse_args(["learn", "--preset", "divmerge", *argv])
    assert dataclass_from_args(LearnParams, args, apply_preset(LearnParams(), args.preset)).init == want


def test_cli_init_refuses_other_text_and_shows_one_over_k_as_default(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["learn", "--init", "half"])
    assert exc.value.code == 2 and "give a number or 1/K (got 'half')" in capsys.readouterr().err
    learn = build_parser()._subparsers._group_actions[0].choices["learn"]
    helps = {a.dest: a.help for a in learn._actions}
    assert helps["init"].endswith("(default: 1/K)") and "-1" not in helps["init"]


def test_merge_card_shows_one_over_k():
    cfg = {"method": "learned", "params": dataclasses.asdict(LearnParams())}
    assert shown_params(cfg)["init"] == "1/K"
    assert shown_params({"method": "learned", "params": {"init": 0.5}}) == {"init": 0.5}
    assert shown_params({"method": "tsv_m", "params": {"fraction": None}}) == {"fraction": None}


def test_static_none_fields_parse_from_key_values():
    assert parse_params("tsv_m", ["fraction=none"]).fraction is None
    assert parse_params("pico", ["lam=0.4"]).lam == 0.4


# ----------------------------------------------------------------------------- the form (AppTest)


def _form_script(kind: str):
    import streamlit as st

    from mergecore.learn.params import LearnParams
    from mergecore.merges.registry import METHODS
    from pages.ui.forms import dataclass_form

    from mergecore.placement import LoadParams

    cls = {"learn": LearnParams, "load": LoadParams}.get(kind) or METHODS[kind].params_cls
    with st.form("f"):
        st.session_state["out"] = dataclass_form(cls, f"t_{kind}")
        st.form_submit_button("Go")


def _form(kind: str) -> AppTest:
    at = AppTest.from_function(_form_script, args=(kind,), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def _labels(block) -> list[str]:
    kinds = ("selectbox", "number_input", "text_input", "checkbox")
    return [w.label for k in kinds for w in block.get(k)]


def _everything(at) -> str:
    texts = []
    for k in ("selectbox", "number_input", "text_input", "checkbox"):
        for w in at.get(k):
            texts += [str(w.label), str(w.help or ""), str(w.value)]
            texts += [str(o) for o in getattr(w, "options", [])]
    return " | ".join(texts)


def test_learn_form_labels_main_first_rest_folded_and_one_over_k():
    at = _form("learn")
    fields = {f.name: f.metadata["label"] for f in dataclasses.fields(LearnParams)}
    (folded,) = at.expander
    assert folded.label == "More settings" and not folded.proto.expanded
    inside = set(_labels(folded))
    assert inside == {fields[n] for n in fields if n not in MAIN_LEARN}
    assert set(_labels(at)) - inside == {fields[n] for n in MAIN_LEARN}
    assert at.selectbox(key="t_learn_objective").label == "Objective"
    assert at.selectbox(key="t_learn_granularity").label == "Coefficient granularity"
    assert at.number_input(key="t_learn_steps").label == "Optimisation steps"
    assert at.number_input(key="t_learn_lr").label == "Learning rate (Adam, cosine schedule)"
    init = at.text_input(key="t_learn_init")
    assert (init.label, init.value) == ("Start value of every coefficient", "1/K")
    assert "-1" not in _everything(at)
    assert at.selectbox(key="t_learn_granularity").options[1] == "layer-wise: one per task and LoRA module"
    assert at.session_state["out"] == LearnParams()


@pytest.mark.parametrize("text, want", [("0.5", 0.5), ("1/3", 1 / 3), ("1/K", None), ("", None)])
def test_learn_form_start_value_reads_one_over_k_or_a_number(text, want):
    at = _form("learn")
    at.text_input(key="t_learn_init").set_value(text)
    at.number_input(key="t_learn_seed").set_value(3)  # a folded field still reaches the result
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["out"] == LearnParams(init=want, seed=3)


def test_learn_form_bad_start_value_is_one_line_and_keeps_one_over_k():
    at = _form("learn")
    at.text_input(key="t_learn_init").set_value("half")
    at.button[0].click().run()
    assert [e.value for e in at.error] == [
        "Start value of every coefficient: give a finite number or 1/K (got 'half'); nothing starts until it is one"]
    assert at.session_state["out"].init is None


def test_merge_method_forms_are_labelled_and_folded():
    at = _form("tsv_m")
    assert not at.expander  # nothing folded: both settings are main ones
    frac = at.text_input(key="t_tsv_m_fraction")
    assert (frac.label, frac.value) == ("Rank fraction kept per task", "1/K")
    assert at.number_input(key="t_tsv_m_alpha").label == "Scale of the merged update (alpha)"
    at = _form("pico")
    (folded,) = at.expander
    assert set(_labels(folded)) == {"Density (ties)", "Sign election (ties)", "Rank fraction kept per task (tsv_m)",
                                    "Scale of the merged update (alpha)"}
    assert at.text_input(key="t_pico_lam").value == "method default"
    at.text_input(key="t_pico_lam").set_value("0.4")
    at.selectbox(key="t_pico_base_method").set_value("ties")
    at.button[0].click().run()
    assert at.session_state["out"] == METHODS["pico"].params_cls(lam=0.4, base_method="ties")


# ----------------------------------------------------------------------------- the base's loading (Workspace)


def test_load_params_have_labels_and_the_form_reads_none_as_none():
    from mergecore.placement import LoadParams

    _check_metadata(LoadParams)
    at = _form("load")
    boxes = {w.label: w for w in at.selectbox}
    assert boxes["Base weights dtype"].value == "auto" and boxes["Quantize the base"].value is None
    assert "none" in boxes["Quantize the base"].options and at.text_input[0].value == ""
    assert at.session_state["out"] == LoadParams()
    boxes["Base weights dtype"].set_value("bfloat16")
    boxes["Quantize the base"].set_value("nf4")
    at.text_input[0].input("balanced")
    at.button[0].click().run()
    assert at.session_state["out"] == LoadParams(dtype="bfloat16", quantize="nf4", device_map="balanced")
