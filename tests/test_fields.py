"""mergecore.fields: one set of spellings for every front end. Each spelling of the table is fed to the CLI (a
parser built by ``add_dataclass_args``, then ``dataclass_from_args``), to the app's reading of text
(``parse_value``, what its text inputs call; AppTest for the optional-number and choice widgets) and, for the merge
methods, to ``--param key=value`` (``parse_params``): the same value or the same refusal everywhere."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

import pytest
from streamlit.testing.v1 import AppTest

from mergecore.analysis.lenses import LensParams
from mergecore.cli import Parser
from mergecore.cli.flags import NONE_GIVEN, add_dataclass_args, dataclass_from_args
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportParams
from mergecore.fields import check_number, none_spellings, param, parse_value, value_type
from mergecore.learn.params import LearnParams
from mergecore.merges.registry import METHODS, parse_params
from mergecore.placement import LoadParams

CLASSES = [LearnParams, LensParams, LoadParams, ExportParams, *{m.params_cls for m in METHODS.values()}]
SPELLINGS = ["0.5", "1/3", " 2 ", "1e-3", "-4", "7", "-1/8", "2.0", "1_000", "none", "None", "NULL", "", "1/K",
             "1/k", "method default", "true", "No", "ON", "nan", "inf", "-inf", "1/0", "0/0", "1e999", "1e300/1e-300",
             "1/2/3", "9" * 5000, "abc", "bogus", "TIES", "ties", "js", "nf4", "auto", "balanced"]
REFUSED = "refused"


def _cases():
    for cls in sorted(CLASSES, key=lambda c: c.__name__):
        for f in dataclasses.fields(cls):
            for text in [*SPELLINGS, *f.metadata.get("choices", ())]:
                yield pytest.param(cls, f, text, id=f"{cls.__name__}.{f.name}={text[:12]!r}")


def _built(cls, make) -> object:
    try:
        return make()
    except MergecoreError:
        return REFUSED


def _cli(cls, f, text: str, capsys) -> tuple[object, object]:
    """(the flag's parsed value or REFUSED, the dataclass built from the flags or REFUSED)."""
    parser = Parser(prog="t")
    add_dataclass_args(parser, cls)
    capsys.readouterr()
    try:
        ns = parser.parse_args([f"--{f.name.replace('_', '-')}={text}"])
    except SystemExit as exc:
        err = capsys.readouterr().err.splitlines()
        assert exc.code == 2 and len(err) == 1 and err[0].startswith("error: argument --"), err
        return REFUSED, REFUSED
    value = getattr(ns, f.name)
    return (None if value is NONE_GIVEN else value), _built(cls, lambda: dataclass_from_args(cls, ns))


@pytest.mark.parametrize("cls, f, text", _cases())
def test_every_field_reads_each_spelling_the_same_in_the_cli_the_app_and_key_values(cls, f, text, capsys):
    try:
        value = parse_value(f, text)
    except MergecoreError as exc:
        assert "\n" not in str(exc) and f.name in str(exc)
        value = REFUSED
    built = REFUSED if value is REFUSED else _built(cls, lambda: cls(**{f.name: value}))
    if value_type(f)[0] is not bool:  # a bool is a store_true flag on the command line: no text to read
        cli_value, cli_built = _cli(cls, f, text, capsys)
        assert cli_value == value or (cli_value != cli_value and value != value), (cli_value, value)
        assert type(cli_value) is type(value)
        assert cli_built == built
    method = next((m for m in METHODS.values() if m.params_cls is cls), None)
    if method is not None:
        assert _built(cls, lambda: parse_params(method, [f"{f.name}={text}"])) == built


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_bool_fields_are_store_true_flags(cls):
    parser = Parser(prog="t")
    add_dataclass_args(parser, cls)
    for f in dataclasses.fields(cls):
        if value_type(f)[0] is bool:
            flag = f"--{f.name.replace('_', '-')}"
            assert getattr(parser.parse_args([flag]), f.name) is True
            assert getattr(parser.parse_args([]), f.name) is None  # unset: the default or the preset stays


# ----------------------------------------------------------------------------- the spellings, one by one

NUMBER, WHOLE, MAYBE = (dataclasses.field(default=0.5), dataclasses.field(default=1),
                        param(None, "Start", "start value", none_label="1/K"))


@dataclass(frozen=True)
class Example:
    x: float = NUMBER
    n: int = WHOLE
    init: float | None = MAYBE
    pick: str = param("a", "Pick", "a choice", choices=("a", "b"))
    maybe_pick: str | None = param(None, "Maybe pick", "an optional choice", choices=("a", "b"), none_label="off")
    flag: bool = param(False, "Flag", "a switch")
    name: str = param("", "Name", "a text")
    where: str | None = param(None, "Where", "optional text", none_label="nowhere")


F = {f.name: f for f in dataclasses.fields(Example)}


@pytest.mark.parametrize("name, text, want", [
    ("x", "0.5", 0.5), ("x", " 2 ", 2.0), ("x", "1/3", 1 / 3), ("x", "-1/8", -0.125), ("x", "1e-3", 1e-3),
    ("x", "3/ 4", 0.75), ("x", "1_0", 10.0), ("x", "1e300/1e10", 1e290), ("x", "0/5", 0.0),
    ("n", "7", 7), ("n", " -4 ", -4), ("n", "1_000", 1000),
    ("init", "none", None), ("init", "NULL", None), ("init", "", None), ("init", "  ", None), ("init", "1/K", None),
    ("init", "1/k", None), ("init", "0.25", 0.25), ("init", "1/4", 0.25),
    ("pick", "b", "b"), ("pick", " a ", "a"), ("maybe_pick", "off", None), ("maybe_pick", "none", None),
    ("maybe_pick", "a", "a"),
    ("flag", "true", True), ("flag", "Yes", True), ("flag", "ON", True), ("flag", "1", True), ("flag", "false", False),
    ("flag", "No", False), ("flag", "off", False), ("flag", "0", False),
    ("name", " sst2 ", "sst2"), ("name", "none", "none"), ("name", "", ""),
    ("where", "nowhere", None), ("where", "", None), ("where", "map.json", "map.json"),
])
def test_accepted_spellings(name, text, want):
    got = parse_value(F[name], text)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("name, text, message", [
    ("x", "abc", "parameter x expects float, got 'abc'"),
    ("x", "1/2/3", "parameter x expects float, got '1/2/3'"),
    ("x", "1/K", "parameter x expects float, got '1/K'"),
    ("x", "none", "parameter x expects float, got 'none'"),
    ("x", "", "parameter x expects float, got ''"),
    ("x", "nan", "x must be a finite number, got 'nan'"),
    ("x", "-inf", "x must be a finite number, got '-inf'"),
    ("x", "1e999", "x must be a finite number, got '1e999'"),
    ("x", "1/0", "x must be a finite number, got '1/0'"),
    ("x", "0/0", "x must be a finite number, got '0/0'"),
    ("x", "inf/2", "x must be a finite number, got 'inf/2'"),
    ("x", "2/inf", "x must be a finite number, got '2/inf'"),
    ("x", "nan/1", "x must be a finite number, got 'nan/1'"),
    ("x", "1e300/1e-300", "x must be a finite number, got '1e300/1e-300'"),
    ("n", "1.5", "parameter n expects int, got '1.5'"),
    ("n", "2.0", "parameter n expects int, got '2.0'"),
    ("n", "1e3", "parameter n expects int, got '1e3'"),
    ("n", "1/2", "parameter n expects int, got '1/2'"),
    ("n", "9" * 5000, "parameter n expects int, got '" + "9" * 5000 + "'"),  # never a 5000-digit int
    ("init", "half", "parameter init expects float, got 'half'"),
    ("init", "inf", "init must be a finite number, got 'inf'"),
    ("pick", "c", "pick must be one of a, b, got 'c'"),
    ("pick", "A", "pick must be one of a, b, got 'A'"),
    ("pick", "none", "pick must be one of a, b, got 'none'"),
    ("maybe_pick", "c", "maybe_pick must be one of a, b or off, got 'c'"),
    ("flag", "maybe", "parameter flag expects bool, got 'maybe'"),
    ("flag", "", "parameter flag expects bool, got ''"),
])
def test_refused_spellings_are_one_line_naming_the_field(name, text, message):
    with pytest.raises(MergecoreError) as exc:
        parse_value(F[name], text)
    assert str(exc.value) == message


def test_param_writes_the_metadata_the_front_ends_read():
    assert F["pick"].default == "a" and F["init"].default is None
    assert dict(F["pick"].metadata) == {"label": "Pick", "help": "a choice", "advanced": False, "choices": ("a", "b")}
    assert dict(F["init"].metadata) == {"label": "Start", "help": "start value", "advanced": False, "none_label": "1/K"}
    f = param(3, "Three", "a number", advanced=True, choices=(3, 4), choice_labels={3: "three"})
    assert (f.default, dict(f.metadata)) == (3, {"label": "Three", "help": "a number", "advanced": True,
                                                 "choices": (3, 4), "choice_labels": {3: "three"}})


def test_value_type_reads_written_and_real_annotations():
    assert [value_type(F[n]) for n in ("x", "n", "init", "pick", "maybe_pick", "flag")] == [
        (float, False), (int, False), (float, True), (str, False), (str, True), (bool, False)]
    real = dataclasses.field(default=None)
    for tp, want in ((typing.Optional[float], (float, True)), (int | None, (int, True)), (str, (str, False))):
        real.type = tp
        assert value_type(real) == want
    assert none_spellings(F["init"]) == {"", "none", "null", "1/k"}
    assert none_spellings(F["x"]) == {"", "none", "null"}


# ----------------------------------------------------------------------------- the CLI's words


@pytest.mark.parametrize("argv, says", [
    (["--n=many"], "argument --n: invalid int value: 'many'; give a whole number"),
    (["--x=nan"], "argument --x: invalid float value: 'nan'; give a finite number"),
    (["--init=half"], "argument --init: give a number or 1/K (got 'half')"),
    (["--pick=c"], "argument --pick: invalid choice: 'c' (choose from a, b)"),
    (["--maybe-pick=c"], "argument --maybe-pick: invalid choice: 'c' (choose from a, b, off)"),
])
def test_cli_refusals_are_one_line_in_argparse_words(argv, says, capsys):
    parser = Parser(prog="t")
    add_dataclass_args(parser, Example)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2 and capsys.readouterr().err.splitlines() == [f"error: {says}; see t --help"]


def test_cli_optional_whole_number_says_whole():
    @dataclass(frozen=True)
    class Count:
        k: int | None = param(None, "K", "a count", none_label="all")

    parser = Parser(prog="t")
    add_dataclass_args(parser, Count)
    assert dataclass_from_args(Count, parser.parse_args(["--k=all"]), Count(k=3)).k is None
    assert dataclass_from_args(Count, parser.parse_args(["--k=3"])).k == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--k=2.5"])


def test_cli_help_shows_defaults_and_lists_choices():
    parser = Parser(prog="t")
    add_dataclass_args(parser, Example)
    helps = {a.dest: a for a in parser._actions}
    assert helps["init"].help == "start value (default: 1/K)" and helps["x"].help == " (default: 0.5)"
    assert helps["pick"].choices == ("a", "b") and helps["maybe_pick"].choices is None
    assert helps["pick"].type.__name__ == "str" and helps["n"].type.__name__ == "int"


def test_merge_params_name_the_method():
    with pytest.raises(MergecoreError, match=r"^tsv_m: parameter fraction expects float, got '1/K/2'$"):
        parse_params("tsv_m", ["fraction=1/K/2"])
    with pytest.raises(MergecoreError, match=r"^ties: lam must be a finite number, got '1/0'$"):
        parse_params("ties", ["lam=1/0"])
    assert parse_params("ties", ["lam=1/3"]).lam == 1 / 3  # as --init 1/3 and the app's 1/3


def test_init_one_third_on_the_command_line():
    from mergecore.cli import build_parser

    args = build_parser().parse_args(["learn", "--init", "1/3"])
    assert dataclass_from_args(LearnParams, args).init == 1 / 3


# ----------------------------------------------------------------------------- the app's widgets (AppTest)


def _form_script(kind: str):
    import streamlit as st

    from mergecore.learn.params import LearnParams
    from mergecore.merges.registry import METHODS
    from pages.ui.forms import dataclass_form

    cls = LearnParams if kind == "learn" else METHODS[kind].params_cls
    with st.form("f"):
        st.session_state["out"] = dataclass_form(cls, "t")
        st.form_submit_button("Go")


TYPED = ["0.5", "1/3", " 2 ", "1e-3", "-1/8", "none", "NULL", "", "1/K", "method default", "nan", "inf", "1/0",
         "1e999", "1e300/1e-300", "abc", "1/2/3"]


@pytest.mark.parametrize("kind, cls, name", [("learn", LearnParams, "init"), ("tsv_m", METHODS["tsv_m"].params_cls,
                                                                             "fraction"),
                                             ("pico", METHODS["pico"].params_cls, "lam")])
def test_the_apps_optional_number_reads_each_spelling_as_the_cli(kind, cls, name, capsys):
    at = AppTest.from_function(_form_script, args=(kind,), default_timeout=60)
    at.run()
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    for text in TYPED:
        cli_value, cli_built = _cli(cls, f, text, capsys)
        if cli_value is not REFUSED and cli_built is REFUSED:
            continue  # read, then out of the field's range: the dataclass's own check, the same code everywhere
        at.text_input(key=f"t_{name}").set_value(text)
        at.button[0].click().run()
        assert not at.exception, at.exception
        errors = [e.value for e in at.error]
        if cli_value is REFUSED:  # one error line naming the field; the value stays as it was
            assert len(errors) == 1 and errors[0].startswith(f.metadata["label"] + ": "), (text, errors)
            assert at.session_state["out"] == cls(), text
        else:
            assert not errors, (text, errors)
            out = at.session_state["out"]
            got = getattr(out, name)
            assert cli_built == out and (got == cli_value or math.isclose(got, cli_value)), text


@pytest.mark.parametrize("kind, cls", [("learn", LearnParams), ("pico", METHODS["pico"].params_cls),
                                       ("knots", METHODS["knots"].params_cls)])
def test_the_apps_choice_boxes_offer_exactly_what_the_cli_accepts(kind, cls, capsys):
    at = AppTest.from_function(_form_script, args=(kind,), default_timeout=60)
    at.run()
    for f in dataclasses.fields(cls):
        if not f.metadata.get("choices"):
            continue
        assert len(at.selectbox(key=f"t_{f.name}").options) == len(f.metadata["choices"])
        for choice in f.metadata["choices"]:
            assert _cli(cls, f, choice, capsys)[0] == choice == parse_value(f, choice)
            at.selectbox(key=f"t_{f.name}").set_value(choice)
            at.button[0].click().run()
            assert getattr(at.session_state["out"], f.name) == choice
        assert _cli(cls, f, "bogus", capsys)[0] is REFUSED  # the box offers no other name


# ----------------------------------------------------------------------------- check_number: the range check


@pytest.mark.parametrize("args, kw, message", [
    (("x", float("nan"), "--x"), {}, "x must be a finite number (got nan); set --x to a finite number"),
    (("x", True, "--x"), {}, "x must be a finite number (got True); set --x to a finite number"),
    (("x", "1", "--x"), {}, "x must be a finite number (got '1'); set --x to a finite number"),
    (("x", 1.5, "--x"), {"whole": True}, "x must be a whole number (got 1.5); set --x to a whole number"),
    (("x", -1, "--x", 0), {"whole": True}, "x must be at least 0 (got -1); set --x to a whole number >= 0"),
    (("x", 1.5, "--x", 1), {"whole": True}, "x must be at least 1 (got 1.5); set --x to a whole number >= 1"),
    (("x", 0, "--x", 0), {"above": True}, "x must be a positive number (got 0); set --x to a finite number > 0"),
    (("x", 1, "--x", 1), {"above": True}, "x must be a finite number > 1 (got 1); set --x to a finite number > 1"),
    (("x", -1.0, "--x", 0), {}, "x must be a finite number >= 0 (got -1.0); set --x to a finite number >= 0"),
    (("x", float("inf"), "--x", 0), {}, "x must be a finite number >= 0 (got inf); set --x to a finite number >= 0"),
    (("x", 5, "--x", 0, 1), {}, "x must be a number in [0, 1] (got 5); set --x to a number in [0, 1]"),
    (("x", 0, "--x", 0, 1), {"above": True}, "x must be a number in (0, 1] (got 0); set --x to a number in (0, 1]"),
    (("x", -1, "--x", 0, 2**63 - 1), {"whole": True},
     "x must be a whole number in [0, 2**63 - 1] (got -1); set --x to a whole number in [0, 2**63 - 1]"),
    (("x", 0, "--x", 1, 2**21 - 1), {"whole": True},
     "x must be a whole number in [1, 2**21 - 1] (got 0); set --x to a whole number in [1, 2**21 - 1]"),
    (("x", 0, "--x", 1, 2**20 - 1), {"whole": True},
     "x must be a whole number in [1, 1048575] (got 0); set --x to a whole number in [1, 1048575]"),
    (("x", 0, "--x", 1, 2**21), {"whole": True},
     "x must be a whole number in [1, 2097152] (got 0); set --x to a whole number in [1, 2097152]"),
    (("x", 0, "--x", 1, 3), {"whole": True}, "x must be a whole number in [1, 3] (got 0); set --x to a whole number in [1, 3]"),
    (("x", 2, "--x", None, 1), {}, "x must be a finite number (got 2); set --x to a finite number"),
])
def test_check_number_refuses_in_one_line_naming_the_flag(args, kw, message):
    with pytest.raises(MergecoreError) as exc:
        check_number(*args, **kw)
    assert str(exc.value) == message


@pytest.mark.parametrize("args, kw", [
    (("x", 0.0, "--x", 0), {}), (("x", 1, "--x", 0, 1), {}), (("x", 0, "--x", 0, 1), {}), (("x", 1e-9, "--x", 0),
                                                                                            {"above": True}),
    (("x", 2**63 - 1, "--x", 0, 2**63 - 1), {"whole": True}), (("x", -5.0, "--x"), {}), (("x", 3, "--x", 3), {"whole": True}),
    (("x", 1, "--x", None, 1), {}),
])
def test_check_number_passes_values_in_range(args, kw):
    assert check_number(*args, **kw) is None
