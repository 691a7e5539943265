"""The manual: README.md stays one screen of what matters and links into docs/, every page of docs/
is in mkdocs.yml's navigation, every relative link in the Markdown resolves, and (where MkDocs is
installed) `mkdocs build --strict` passes — a broken link or anchor fails it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TOP_MARKDOWN = ("README.md", "benchmarks/README.md", "edge/README.md", "deploy/README.md", "artifacts/README.md")


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    return []


def _nav() -> list[str]:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with mkdocs (the dev extra)")
    return _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])


def test_every_docs_page_is_in_the_navigation_once():
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    nav = _nav()
    assert sorted(nav) == pages, f"left out: {sorted(set(pages) - set(nav))}; missing files: {sorted(set(nav) - set(pages))}"
    assert len(nav) == len(set(nav))


def test_the_readme_is_short_and_keeps_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "README.md is one screen of what matters: move the rest into docs/"
    assert '.venv/bin/pip install -e ./edge -e ".[train,edge,dev]" && .venv/bin/python -m pytest -q -rs' in text
    assert '.venv/bin/pip install -e ./edge -e ".[train,edge]" && .venv/bin/nin-pipeline build --dataset cifar10' in text


@pytest.mark.parametrize("name", TOP_MARKDOWN + tuple(str(p.relative_to(REPO)) for p in sorted(DOCS.rglob("*.md"))))
def test_relative_links_resolve(name):
    page = REPO / name
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{name}: links to missing files: {broken}"


def test_no_dated_lab_notes_in_the_code():
    """Measured figures and their dates belong in docs/benchmarks/, not in comments."""
    dated = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    found = [f"{p.relative_to(REPO)}:{i}" for pkg in ("pipeline", "edge_app") for p in sorted((REPO / pkg).rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if dated.search(line)]
    assert not found, found


def test_mkdocs_builds_strict(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    out = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
