"""Security: localhost-only server config with an upload limit, no code execution on user data
anywhere in mergecore/ or the pages, and a README security section that matches the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("mergecore/**/*.py"), *ROOT.glob("pages/**/*.py"), ROOT / "app.py"])

# ----------------------------------------------------------------------------- server config


def test_streamlit_config_binds_localhost_and_limits_uploads():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = cfg["server"]
    assert server["address"] == "127.0.0.1"
    assert isinstance(server["maxUploadSize"], int) and 0 < server["maxUploadSize"] <= 200  # MB
    assert server.get("enableXsrfProtection", True) is True and server.get("enableCORS", True) is True
    assert cfg.get("browser", {}).get("gatherUsageStats") is False


def test_streamlit_itself_reads_those_options_from_the_repo():
    code = ("from streamlit import config; config.get_config_options(force_reparse=True); "
            "print(config.get_option('server.address'), config.get_option('server.maxUploadSize'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    address, limit = out.stdout.split()[-2:]
    assert address == "127.0.0.1" and 0 < int(limit) <= 200


# ----------------------------------------------------------------------------- no code execution on user data

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
FORBIDDEN_BUILTINS = {"eval", "exec", "__import__"}


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def findings(source: str, filename: str = "<src>") -> list[str]:
    """Every call or import that could run code from data: eval/exec, pickle-family modules,
    torch.load without weights_only=True, np.load(allow_pickle=True), pandas read_pickle,
    yaml.load / unsafe_load, os.system / popen, subprocess shell=True, trust_remote_code=True."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            names = [a.name for a in node.names if not a.name.endswith("Error")]  # exception classes are fine
            out += [f"{where} from {node.module} import {n}" for n in names]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if isinstance(node.func, ast.Name) and name in FORBIDDEN_BUILTINS:
                out.append(f"{where} {name}(")
            elif last == "load" and name.split(".")[0] == "torch" and not _is_true(_kw(node, "weights_only")):
                out.append(f"{where} {name}( without weights_only=True")
            elif last == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(_kw(node, "allow_pickle")):
                out.append(f"{where} {name}(allow_pickle=True)")
            elif last in ("read_pickle", "unsafe_load") or name in ("yaml.load", "yaml.load_all", "os.system", "os.popen"):
                out.append(f"{where} {name}(")
            elif _is_true(_kw(node, "shell")):
                out.append(f"{where} {name}(shell=True)")
            elif _is_true(_kw(node, "trust_remote_code")):
                out.append(f"{where} {name}(trust_remote_code=True)")
    return out


def test_the_scanner_catches_each_pattern():
    planted = textwrap_dedent('''
        import pickle
        from dill import loads
        from pickle import UnpicklingError, Unpickler
        import torch, numpy as np, os, subprocess, yaml, pandas as pd
        eval("1"); exec("x = 1"); __import__("os")
        torch.load("f.bin"); torch.load("f.bin", weights_only=False)
        np.load("a.npy", allow_pickle=True); pd.read_pickle("p"); yaml.load(s); os.system("ls")
        subprocess.run("ls", shell=True); AutoModel.from_pretrained(p, trust_remote_code=True)
    ''')
    got = findings(planted)
    assert len(got) == 14, got
    fine = textwrap_dedent('''
        import torch, numpy as np
        from pickle import UnpicklingError
        model.eval(); torch.load(b, weights_only=True); np.load("a.npy"); re.compile("x")
        AutoModel.from_pretrained(p, trust_remote_code=trust_remote_code); yaml.safe_load(s)
    ''')
    assert findings(fine) == []


def textwrap_dedent(s: str) -> str:
    import textwrap

    return textwrap.dedent(s)


def test_no_code_execution_on_user_data_in_sources():
    assert len(SOURCES) > 20 and (ROOT / "mergecore" / "adapters.py") in SOURCES
    hits = [h for f in SOURCES for h in findings(f.read_text(), str(f.relative_to(ROOT)))]
    assert hits == [], "\n".join(hits)


def test_the_only_torch_load_is_the_opt_in_bin_path():
    calls = [(f.relative_to(ROOT).as_posix(), n.lineno) for f in SOURCES
             for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Call) and _dotted(n.func) == "torch.load"]
    assert [c[0] for c in calls] == ["mergecore/adapters.py"], calls


def test_hub_adapter_downloads_fetch_only_config_and_safetensors():
    src = (ROOT / "mergecore" / "adapters.py").read_text()
    assert re.search(r"snapshot_download\(repo_id, allow_patterns=\[CONFIG_FILE, WEIGHTS_FILE\]\)", src)


# ----------------------------------------------------------------------------- README


def security_section() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Security\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "README has no '## Security' section"
    return m.group(1)


def test_readme_security_section_names_the_real_flags_and_defaults():
    from mergecore.cli import build_parser

    sec = security_section()
    for words in ("127.0.0.1", "--allow-bin", "weights_only=True", "--trust-remote-code", ".safetensors"):
        assert words in sec, words
    commands = build_parser()._subparsers._group_actions[0].choices
    flags = {o for c in commands.values() for a in c._actions for o in a.option_strings}
    for flag in re.findall(r"--[a-z][a-z-]+", sec):
        if flag.startswith("--server."):
            continue
        assert flag in flags, f"README names {flag}, which no command accepts"
    for words in ("--force", "MERGECORE_ALLOWED_HOSTS", "Host", "as text"):  # issue 25's promises
        assert words in sec, words


@pytest.mark.parametrize("claim", ["eval", "exec", "unpickle"])
def test_readme_claims_match_the_scan(claim):
    assert claim in security_section()  # the claim is made, and test_no_code_execution... holds it to account
