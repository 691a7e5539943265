"""The code's shape: no import cycle in pipeline/ and edge_app/ (imports inside functions
count), no import up the stages (a sub-package imports only its own layer and the ones before it,
in the order data flows), the device side never reaches for the training side, every sub-package
says what it holds, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "edge_app")

# The layers, in the order data flows: a module may import from its own layer and earlier ones.
# Each top-level module or sub-package is named once; a new one must be placed here.
LAYERS = {
    "pipeline": ["errors progress", "data", "models", "train", "export", "runs", "report", "stages", "choose",
                 "cli __main__"],
    # the contract (run-folder files, sidecar) is the device side's base: the runtime takes its defaults from it
    "edge_app": ["errors fsutil quiet subpython health contract runtime", "frames", "model", "checks", "camera",
                 "measure", "agent", "cli __main__"],
}


def _layer(module: str) -> int:
    pkg, _, rest = module.partition(".")
    if not rest:
        return 0  # the package's own __init__
    first = rest.split(".")[0]
    for rank, names in enumerate(LAYERS[pkg]):
        if first in names.split():
            return rank
    raise AssertionError(f"{module}: place {pkg}.{first} in tests/test_layout.py's LAYERS")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module that ``name`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from this module's package, up level - 1 packages
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
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
    f.write_text("def f():\n    from ..runs.folder import RunFolder\n    from . import main\n    import pipeline.data.tree\n")
    known = {"pipeline.runs.folder": f, "pipeline.cli.main": f, "pipeline.cli.m": f, "pipeline.data.tree": f}
    assert _imports("pipeline.cli.m", f, known) == {"pipeline.runs.folder", "pipeline.cli.main", "pipeline.data.tree"}


def test_the_layers_read_in_data_order():
    assert _layer("pipeline.errors") == 0 < _layer("pipeline.data.splits") < _layer("pipeline.cli.main")
    assert _layer("edge_app.contract.sidecar") == _layer("edge_app.runtime") < _layer("edge_app.frames.sources")
    assert _layer("edge_app.frames.sources") < _layer("edge_app.camera.loop") < _layer("edge_app.cli.main")


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 20
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_import_up_the_layers():
    up = sorted(f"{n} -> {m}" for n, deps in _graph().items() for m in deps
                if m.split(".")[0] == n.split(".")[0] and _layer(m) > _layer(n))
    assert not up


@pytest.mark.parametrize("pkg", sorted({n for n, p in _modules().items() if p.name == "__init__.py"}))
def test_every_package_says_what_it_holds_and_may_import(pkg):
    doc = ast.get_docstring(ast.parse(_modules()[pkg].read_text())) or ""
    assert len(doc) > 80 and "import" in doc, f"{pkg}/__init__.py: say what it holds and what it may import"


def test_edge_app_never_imports_the_training_side():
    bad = {n: sorted(d) for n, d in _graph().items() if n.startswith("edge_app") and any(m.startswith("pipeline") for m in d)}
    assert not bad


@pytest.mark.parametrize("name, path", sorted(_modules().items()))
def test_no_module_over_about_400_lines(name, path):
    assert len(path.read_text().splitlines()) <= 420, f"{name} has grown past ~400 lines: split it by job"
