"""The package's shape: no import circle, lower layers never import upper ones, small modules.

Imports are read from the source (``ast``), including imports inside functions, so a lazy import
cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "archlint"

#: Lowest first. A module may import modules of its own layer or of layers below it.
LAYERS = [
    {"__init__", "results", "paths", "probe", "suppressions", "guard"},
    {"report", "baseline"},
    {"graph"},
    {"meanfield"},
    {"ops"},
    {"loading"},
    {"tracing"},
    {"analysis"},
    {"estimate"},
    {"rules"},
    {"rule_docs", "engine", "measure", "measure_step", "fixes"},
    {"config", "cache"},
    {"runner", "api", "testing", "pipeline", "worker", "watchdog"},
    {"cli", "__main__"},
]
MAX_LINES = 700


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (absolute dotted names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("archlint"):
                continue
            for alias in node.names:  # ``from . import x`` imports the submodule x
                sub = f"{target}.{alias.name}"
                out.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or
                        (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("archlint"))
    return out


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {i for i in _imports(p) if i in MODULES and i != name}
         for name, p in MODULES.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for k, layer in enumerate(LAYERS):
        if top in layer:
            return k
    raise AssertionError(f"{module}: not in any layer of tests/test_layout.py")


def test_no_import_circle():
    # a package imports its own submodules (its __init__ re-exports them): not a circle
    def edges(m: str) -> set[str]:
        return {i for i in GRAPH[m] if not (MODULES[m].name == "__init__.py"
                                            and i.startswith(m + "."))}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for i in sorted(edges(m)):
            if state.get(i) == 1:
                cycle = stack[stack.index(i):] + [i]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if i not in state:
                visit(i)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "archlint"))
def test_imports_only_its_layer_and_below(module):
    # (the package root holds __version__ and imports the API lazily: the entry point)
    mine = _layer(module)
    above = sorted(i for i in GRAPH[module] if _layer(i) > mine)
    assert not above, f"{module} (layer {mine}) imports upper layers: {above}"


def test_report_needs_no_torch():
    for name, path in MODULES.items():
        if name.startswith("archlint.report") or name == "archlint.results":
            assert "import torch" not in path.read_text(), name
            assert all(i.startswith(("archlint.report", "archlint.results", "archlint.paths"))
                       or i == "archlint"
                       for i in GRAPH[name]), (name, GRAPH[name])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines (at most {MAX_LINES})"
