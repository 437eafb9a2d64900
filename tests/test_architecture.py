"""The package's shape, checked: layers point one way, no import cycle (imports inside functions counted),
small modules, a short top level, and a library that never imports the app, the scripts or the benches.
docs/architecture.md describes the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mergecore"

# Bottom to top: a module imports modules of its own layer or of layers below it, never above.
LAYERS = (
    ("errors", "numbers", "fields", "files", "placement"),
    ("peft_config", "adapters", "bases", "safezip", "data"),
    ("core_space", "merged", "merges", "divergences"),
    ("forward",),
    ("learn", "analysis.calibration", "analysis.divergence", "analysis.representation", "analysis.spectra",
     "analysis.stability", "analysis.subspaces", "analysis"),
    ("analysis.lenses", "analysis.forward_lenses", "analysis.catalog", "runs.store", "runs.folder"),
    ("runs", "demo", "export"),
    ("cli", "__main__", ""),
)


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """mergecore modules ``name`` imports, anywhere in the file ('' is the package top)."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "mergecore":
                base = node.module.removeprefix("mergecore").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if sub in known else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("mergecore").lstrip(".") for a in node.names if a.name.split(".")[0] == "mergecore"}
    return found - {name}


def layer(name: str) -> int:
    best = max((p for layer in LAYERS for p in layer if name == p or name.startswith(p + ".") or p == ""), key=len)
    return next(i for i, members in enumerate(LAYERS) if best in members)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_layers_point_down():
    up = [(m, d) for m, deps in graph().items() for d in deps
          if layer(d) > layer(m) and not (m == "" or m.startswith(d + ".") or d.startswith(m + "."))]
    assert up == []


def test_no_import_cycle():
    g = graph()  # a package importing its submodules is fine; a submodule importing its package back is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(g):
        if v not in index:
            visit(v)
    assert cycles == []


def test_small_modules_and_a_short_top_level():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    top = [p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert long == {} and len(top) <= 12, (long, top)


def test_the_library_never_imports_the_app_scripts_or_benches():
    banned = ("streamlit", "pages", "app", "scripts", "bench", "tests")
    hits = []
    for f in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            hits += [(str(f.relative_to(ROOT)), n) for n in names if n.split(".")[0] in banned]
    assert hits == []
