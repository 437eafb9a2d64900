"""One line, exit 2: every bad flag of the command line is refused by the real CLI entry (``mergecore.cli.main``,
what ``python -m mergecore`` runs) with exactly one ``error: ...`` line on stderr, nothing on stdout and exit
code 2, before any adapter, hub look-up or model is loaded (the loaders are replaced by ones that fail the
test if called).

Covered: argparse's own errors (unknown flag, bad choice, bad type, missing command or flag: one line and the
command's ``--help``), ``--device`` checked against what torch has, every numeric field of the params
dataclasses (LearnParams, LensParams, ExportParams, each merge method's params: NaN, inf, negative, out of
range; the CLI and the app share the check in the dataclass), the source flags (``--calibration``,
``--eval-size``), and local paths that do not exist (said missing, never looked up on the hub).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import mergecore.adapters
import mergecore.cli.common
import mergecore.forward.spec
import mergecore.forward.workbench
from mergecore.analysis.lenses import LensParams
from mergecore.bases import looks_local
from mergecore.cli import main
from mergecore.errors import MergecoreError
from mergecore.export.params import ExportParams
from mergecore.forward.workbench import resolve_device
from mergecore.learn.params import LearnParams
from mergecore.merges import METHODS, parse_params

ROOT = Path(__file__).resolve().parents[2]
MISSING = "no-such-folder-7f3a"


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    """Nothing may be loaded: adapters, hub downloads and base models fail the test when touched."""
    def touched(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} was called: the bad flag was not refused first")
        return fail

    monkeypatch.setattr(mergecore.forward.spec, "load_adapters", touched("load_adapters"))  # RunSpec.load_inputs
    monkeypatch.setattr(mergecore.forward.workbench, "load_base", touched("load_base"))
    monkeypatch.setattr(mergecore.adapters.huggingface_hub, "snapshot_download", touched("snapshot_download"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "ws"


def refused(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with one stderr line and empty stdout. Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2, (argv, exc.value.code, err)
    assert out == "", (argv, out)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    return lines[0]


# ----------------------------------------------------------------------------- argparse's own errors


@pytest.mark.parametrize("argv, command, says", [
    (["learn", "--bogus"], "learn", "unrecognized arguments: --bogus"),
    (["runs", "extra"], "runs", "unrecognized arguments: extra"),
    (["learn", "--family", "vision"], "learn", "argument --family: invalid choice: 'vision'"),
    (["learn", "--steps", "many"], "learn", "argument --steps: invalid int value: 'many'"),
    (["learn", "--steps"], "learn", "argument --steps: expected one argument"),
    (["learn", "--init", "half"], "learn", "argument --init: give a number or 1/K"),
    (["merge"], "merge", "the following arguments are required: --method"),
    (["analyze", "--what", "everything"], "analyze", "argument --what: invalid choice: 'everything'"),
    (["compare", "--baselines=1"], "compare", "argument --baselines"),
    ([], None, "the following arguments are required: command"),
    (["frobnicate"], None, "argument command: invalid choice: 'frobnicate'"),
])
def test_argparse_errors_are_one_line_with_the_help_hint(argv, command, says, guarded, capsys):
    line = refused(argv, capsys)
    assert says in line
    assert line.endswith(f"; see python -m mergecore{' ' + command if command else ''} --help")


def test_help_still_prints_the_whole_help_and_exits_0(capsys):
    refused(["learn", "--nope"], capsys)  # the one-line error, as above
    with pytest.raises(SystemExit) as exc:
        main(["learn", "--help"])
    assert exc.value.code == 0 and "--eval-limit" in capsys.readouterr().out


def test_python_dash_m_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mergecore", "learn", "--bogus"], cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: unrecognized arguments: --bogus; see python -m mergecore learn --help"]


# ----------------------------------------------------------------------------- --device


def bad_devices() -> list[str]:
    bad = ["gpu", "GPU0", "cuda:x", "meta", "cpu:3", f"cuda:{torch.cuda.device_count() + 7}"]
    if not torch.cuda.is_available():
        bad += ["cuda", "cuda:0"]
    if not torch.backends.mps.is_available():
        bad += ["mps"]
    return bad


@pytest.mark.parametrize("device", bad_devices())
def test_device_torch_does_not_have_is_one_line_before_anything_loads(device, guarded, capsys):
    for argv in (["learn"], ["eval"], ["merge", "--method", "ties"], ["analyze", "--what", "spectra"]):
        line = refused([*argv, "--device", device, "--workspace", str(guarded)], capsys)
        assert line.startswith("error: argument --device: ") and repr(device) in line
    with pytest.raises(MergecoreError, match=r"^(unknown device|device) "):
        resolve_device(device)  # the app and the library get the same line


def test_devices_torch_has_are_accepted():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("CPU") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device(f"cuda:{torch.cuda.device_count() - 1}").type == "cuda"
    with pytest.raises(MergecoreError, match=r"^unknown device 'gpu'; valid: auto, cpu, cuda, cuda:N or mps$"):
        resolve_device("gpu")


def test_cuda_index_beyond_the_device_count_is_one_line(monkeypatch):
    """What a machine with two GPUs answers (the count is faked: this runs without CUDA too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(MergecoreError, match=r"^device 'cuda:2' does not exist: torch sees 2 CUDA device\(s\), "
                                             r"cuda:0 to cuda:1; pick one of them$"):
        resolve_device("cuda:2")


# ----------------------------------------------------------------------------- numeric fields, in the dataclass


def numeric_fields(cls) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kinds = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
        if kinds[0] in (int, float):
            out.append((f.name, kinds[0]))
    return out


def bad_values(cls, name: str, kind: type) -> list:
    """NaN and infinities for every number; a fraction and -1 for whole numbers (a DARE seed may be negative)."""
    floats = [float("nan"), float("inf"), float("-inf")]
    if kind is float:
        return floats
    return [*floats, 1.5] + ([] if name == "seed" and cls.__module__.startswith("mergecore.merges") else [-1])


CLASSES = [LearnParams, LensParams, ExportParams] + sorted({m.params_cls for m in METHODS.values()
                                                            if numeric_fields(m.params_cls)}, key=lambda c: c.__name__)


def check(cls, **values):
    """Build and validate as each front end does: merge params check at construction, the others in validate()."""
    extra = {"mode": "compressed"} if cls is ExportParams else {}  # the rank counts only when compressing
    params = cls(**extra, **values)
    return params.validate() if hasattr(params, "validate") else params


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_every_numeric_field_refuses_non_finite_and_out_of_range_values(cls):
    check(cls)  # the paper defaults pass
    for name, kind in numeric_fields(cls):
        for value in bad_values(cls, name, kind):
            with pytest.raises(MergecoreError) as exc:
                check(cls, **{name: value})
            msg = str(exc.value)
            flag = f"--param {name}" if cls.__module__.startswith("mergecore.merges") else "--" + name.replace("_", "-")
            assert "\n" not in msg and name in msg, msg
            assert flag in msg or name in ("density", "fraction", "strength"), msg  # the merges' older lines


def test_the_smallest_valid_values_pass_and_the_line_names_flag_and_range():
    LearnParams(l2=0.0, eval_every=0, seed=0, init=-0.5, lr=1e-9).validate()
    LensParams(energy_rank=0, threshold=0.0, shared_threshold=1.0, limit=1).validate()
    ExportParams(mode="compressed", rank=1, samples=1).validate()
    with pytest.raises(MergecoreError, match=r"^l2 must be a finite number >= 0 \(got nan\); set --l2 to a finite "
                                             r"number >= 0$"):
        LearnParams(l2=float("nan")).validate()


# ----------------------------------------------------------------------------- numeric flags, through the CLI


def learn_flags() -> list[tuple[str, str]]:
    out = []
    for name, kind in numeric_fields(LearnParams):
        flag = "--" + name.replace("_", "-")
        out += [(flag, v) for v in (["nan", "inf", "1e999"] if kind is float else ["-1"])]
    return out


@pytest.mark.parametrize("flag, value", learn_flags() + [("--eval-every", "-5"), ("--l2", "-0.1"), ("--lr", "0")])
def test_learn_numeric_flags_are_range_checked_before_loading(flag, value, guarded, capsys):
    line = refused(["learn", f"{flag}={value}", "--workspace", str(guarded)], capsys)
    assert flag in line


@pytest.mark.parametrize("flag, value", [(f, v) for f in ("--limit", "--samples", "--n-bins", "--max-rows",
                                                              "--energy-rank") for v in ("-1",)]
                         + [("--threshold", "nan"), ("--threshold", "1.5"), ("--shared-threshold", "nan"),
                            ("--shared-threshold", "inf")])
def test_analyze_numeric_flags_are_range_checked_before_loading(flag, value, guarded, capsys):
    line = refused(["analyze", "--what", "spectra", f"{flag}={value}", "--workspace", str(guarded)], capsys)
    assert flag in line


FLOAT_KEYS = {m.name: [n for n, kind in numeric_fields(m.params_cls) if kind is float] for m in METHODS.values()}


@pytest.mark.parametrize("method", [m for m, keys in FLOAT_KEYS.items() if keys])
def test_merge_params_refuse_nan_and_inf_before_loading(method, guarded, capsys):
    for key in FLOAT_KEYS[method]:
        for value in ("nan", "inf"):
            line = refused(["merge", "--method", method, "--param", f"{key}={value}", "--workspace", str(guarded)],
                           capsys)
            assert f": {key} must be" in line, line
            with pytest.raises(MergecoreError):
                parse_params(method, [f"{key}={value}"])


@pytest.mark.parametrize("argv", [["--samples=-1"], ["--rank=-3"], ["--samples=0"]])
def test_export_numeric_flags_name_the_flag(argv, guarded, capsys):
    line = refused(["export", "--run", "x", "--out", str(guarded.parent / "out"), *argv, "--workspace",
                    str(guarded)], capsys)
    assert argv[0].split("=")[0] in line
    assert not (guarded.parent / "out").exists()


@pytest.mark.parametrize("flag", ["--calibration", "--eval-size"])
@pytest.mark.parametrize("command", [["eval"], ["learn"], ["merge", "--method", "ties"]])
def test_source_counts_refuse_negative_values(flag, command, guarded, capsys):
    line = refused([*command, "--glue", "sst2", f"{flag}=-1", "--workspace", str(guarded)], capsys)
    assert f"argument {flag}: must be >= 0" in line


# ----------------------------------------------------------------------------- local paths


@pytest.mark.parametrize("argv, says", [
    (["--adapters", f"../{MISSING}"], f"adapter folder ../{MISSING} does not exist"),
    (["--adapters", f"./{MISSING}"], f"adapter folder ./{MISSING} does not exist"),
    (["--adapters", f"{MISSING}/../{MISSING}"], f"adapter folder {MISSING}/../{MISSING} does not exist"),
    (["--base-model", f"../{MISSING}"], f"base model folder ../{MISSING} does not exist"),
    (["--base-path", MISSING], f"base model folder {MISSING} does not exist"),
    (["--glue", "sst2", "--glue-dir", f"../{MISSING}"], f"GLUE folder ../{MISSING} does not exist"),
    (["--task-files", f"{MISSING}.json"], f"task mapping {MISSING}.json does not exist"),
    (["--task-files", "."], "task mapping . is not a file"),
])
@pytest.mark.parametrize("command", [["eval"], ["learn"], ["merge", "--method", "uniform"]])
def test_missing_local_paths_are_said_missing_before_any_hub_look_up(argv, says, command, guarded, capsys):
    line = refused([*command, *argv, "--workspace", str(guarded)], capsys)
    assert line.startswith("error: " + says), line
    assert "hub" not in line.split(";")[0]


@pytest.mark.parametrize("argv, says", [(["--quantize", "q4"], "argument --quantize: invalid choice: 'q4'"),
                                        (["--device-map", f"{MISSING}.json"], f"device map '{MISSING}.json' is neither")])
def test_load_flags_are_checked_before_the_adapters_load(argv, says, guarded, capsys):
    assert refused(["eval", *argv, "--workspace", str(guarded)], capsys).startswith("error: " + says)


def test_library_never_looks_a_relative_path_up_on_the_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mergecore.adapters.huggingface_hub, "snapshot_download",
                        lambda *a, **k: pytest.fail("a path was looked up on the hub"))
    for path in (f"../{MISSING}", f"./{MISSING}/x", f".{MISSING}/x"):
        with pytest.raises(MergecoreError, match=rf"^adapter folder .* does not exist; "):
            mergecore.adapters.load_adapters([path])
    assert all(looks_local(p) for p in ("../x", "./x", ".x/y", "x/..", "x/../y", "~/x", "/x", "a/b/c"))
    assert not any(looks_local(p) for p in ("owner/name", "owner/name.v2", "name"))


# ----------------------------------------------------------------------------- checks that live below the CLI


def test_merge_weights_refuse_nan_before_loading(guarded, capsys):
    line = refused(["merge", "--demo", "--method", "task_arithmetic", "--weights", "1", "nan", "1", "1", "1",
                    "--workspace", str(guarded)], capsys)
    assert "--weights must be finite numbers" in line


@pytest.mark.parametrize("field", ["calibration", "eval_size"])
def test_task_source_refuses_a_negative_count_in_the_library_too(field):
    from mergecore.data.sources import TaskSource

    with pytest.raises(MergecoreError, match=f"{field} must be a whole number >= 0"):
        TaskSource("glue", **{field: -1})


def test_a_device_map_that_is_a_fifo_or_deeply_nested_is_one_line(tmp_path, guarded, capsys):
    import os

    fifo = tmp_path / "map.json"
    os.mkfifo(fifo)  # opening it for reading would block forever
    assert "device map" in refused(["learn", "--demo", "--device-map", str(fifo), "--workspace", str(guarded)], capsys)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "deeper than" in refused(["learn", "--demo", "--device-map", str(deep), "--workspace", str(guarded)], capsys)
