"""The package's layering: the science and workflows never import the screen, and no module imports itself back."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "medrobust"


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = sorted(_module_name(p) for p in PKG.rglob("*.py"))
CORE = [m for m in MODULES if not m.startswith("medrobust.dashboard") and m != "medrobust.__main__"]


def _imports(path: Path) -> set[str]:
    """Every medrobust module a file imports, at top level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("medrobust")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medrobust"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return {m for m in out if m in MODULES and m != "medrobust"}


def test_no_core_module_loads_streamlit_or_plotly():
    code = ("import importlib, json, sys\n"
            f"for m in {CORE!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('streamlit', 'plotly'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert len(CORE) > 15  # the list really covers the package


def test_only_the_dashboard_imports_the_dashboard():
    offenders = {m: sorted(i for i in _imports(REPO / (m.replace(".", "/") + ".py")) if i.startswith("medrobust.dashboard"))
                 for m in CORE if m != "medrobust"}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_the_import_graph_has_no_cycle():
    graph = {}
    for path in PKG.rglob("*.py"):
        graph[_module_name(path)] = _imports(path) - {_module_name(path)}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in graph.get(m, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [m, dep]))
            if dep not in state:
                visit(dep, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_the_public_api_resolves():
    import medrobust

    missing = [n for n in medrobust.__all__ if not hasattr(medrobust, n)]
    assert missing == []
