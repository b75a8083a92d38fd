"""The package's shape: no import cycle among harness.* modules (lazy and type-only imports count: they are
cycles waiting for a refactor to trip on), and no module over the house limit of 500 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"harness": "harness", "backends": "harness.backends", "models": "harness.models"}
MAX_LINES = 500
LONG_ALLOWED = {"backends/ascend/sim.py"}  # a cohesive fake of one vendor API


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the folders that install under `harness`."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in (root / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(root / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules `name` imports anywhere in its file: top level, in functions, under TYPE_CHECKING,
    and through `LazyModule("...")`."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets.update([base, *(f"{base}.{a.name}" for a in node.names)])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "LazyModule"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            targets.add(node.args[0].value)
    return {t for t in targets if t in known and t != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in graph:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def import_cycles(root: Path) -> list[list[str]]:
    mods = modules(root)
    return cycles({name: imports(name, path, set(mods)) for name, path in mods.items()})


def long_files(root: Path) -> list[str]:
    """Files over MAX_LINES lines, as `path: lines`, the allowed exceptions left out."""
    out = []
    for folder in PACKAGES:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES and rel not in LONG_ALLOWED:
                out.append(f"{rel}: {lines}")
    return out


def test_no_import_cycle_among_harness_modules() -> None:
    assert import_cycles(ROOT) == []


def test_no_module_over_the_line_limit() -> None:
    assert long_files(ROOT) == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small package tree to plant mistakes in."""
    for folder in PACKAGES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "harness" / "a.py").write_text("from harness.b import x\n")
    (tmp_path / "harness" / "b.py").write_text("x = 1\n")
    return tmp_path


def test_a_lazy_or_type_only_cycle_is_found(tree: Path) -> None:
    assert import_cycles(tree) == []
    (tree / "harness" / "b.py").write_text("def f():\n    from harness import a\n")
    assert import_cycles(tree) == [["harness.a", "harness.b"]]
    (tree / "harness" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    assert import_cycles(tree) == [["harness.a", "harness.b"]]
    (tree / "models" / "m.py").write_text("from harness.a import y\n")
    (tree / "harness" / "b.py").write_text("from harness.models import m\n")
    assert import_cycles(tree) == [["harness.a", "harness.b", "harness.models.m"]]


def test_a_long_file_is_found(tree: Path) -> None:
    assert long_files(tree) == []
    (tree / "backends" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_files(tree) == [f"backends/big.py: {MAX_LINES + 1}"]
