"""The code's shape: no import cycle in pipeline/ and edge_app/ (imports inside functions
count), the device side never reaches for the training side, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "edge_app")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module that ``name`` imports, anywhere in the file."""
    pkg = name.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: within this package (no sub-packages here)
                base = f"{pkg}.{base}" if base else pkg
            # `from . import x` or `from pkg import x` may name a module
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_walker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_walker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from .run import RunFolder\n    from . import cli\n")
    known = {"pipeline.run": f, "pipeline.cli": f, "pipeline.m": f}
    assert _imports("pipeline.m", f, known) == {"pipeline.run", "pipeline.cli"}


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 20
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_edge_app_never_imports_the_training_side():
    bad = {n: sorted(d) for n, d in _graph().items() if n.startswith("edge_app") and any(m.startswith("pipeline") for m in d)}
    assert not bad


@pytest.mark.parametrize("name, path", sorted(_modules().items()))
def test_no_module_over_about_400_lines(name, path):
    assert len(path.read_text().splitlines()) <= 420, f"{name} has grown past ~400 lines: split it by job"
