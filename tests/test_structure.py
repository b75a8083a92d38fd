"""The package's shape: no import cycle among harness.* modules (lazy and type-only imports count: they are
cycles waiting for a refactor to trip on; so does a module named in a string, `importlib.import_module(NAME)` or a
table of names), and no Python file of the repository over the house limit of 500 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"harness": "harness", "backends": "harness.backends", "models": "harness.models"}
MAX_LINES = 500
# A cohesive fake of one vendor API, pinned at its length: new simulator code goes into a new module (sim_*.py).
LONG_ALLOWED = {"backends/ascend/sim.py": 682}
SKIPPED_DIRS = {".git", ".venv", ".venv-latest", "build", "dist", "node_modules"}


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
    and any string that names one (`LazyModule("...")`, `importlib.import_module("...")`, a `module:attr`
    reference, a tuple of module names loaded later)."""
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
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets.add(node.value.partition(":")[0])
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


def python_files(root: Path) -> list[Path]:
    """Every .py file of the repository (tests, benchmarks, scripts and faults included), virtualenvs and build
    outputs left out."""
    return sorted(p for p in root.rglob("*.py") if not SKIPPED_DIRS.intersection(p.relative_to(root).parts[:-1]))


def long_files(root: Path) -> list[str]:
    """Files over their limit (MAX_LINES, or the pinned length of an allowed exception), as `path: lines`."""
    out = []
    for path in python_files(root):
        rel = path.relative_to(root).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > LONG_ALLOWED.get(rel, MAX_LINES):
            out.append(f"{rel}: {lines}")
    return out


RECORD_OWNERS = {"harness/record_schema.py", "harness/record_check.py"}  # the schema, and the check of a line's types


def record_digging(root: Path) -> list[str]:
    """Reads of a record section's raw fields (`timing.data.get("x")`, `t.data["x"]`) outside the modules that
    own the schema, as `path:line`: readers use the typed fields of harness.results instead."""
    out = []
    for path in sorted((root / "harness").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in RECORD_OWNERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            target = node.value if isinstance(node, ast.Subscript) else target
            if isinstance(target, ast.Attribute) and target.attr == "data":
                out.append(f"{rel}:{node.lineno}")
    return out


def test_no_record_section_read_by_string_outside_the_schema() -> None:
    assert record_digging(ROOT) == []


def test_a_record_read_by_string_is_found(tree: Path) -> None:
    (tree / "harness" / "view.py").write_text("def f(t):\n    return t.data['median_ns'], t.data.get('x')\n")
    (tree / "harness" / "record_schema.py").write_text("def g(t):\n    return t.data.get('x')\n")
    assert record_digging(tree) == ["harness/view.py:2", "harness/view.py:2"]


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


def test_a_cycle_through_a_module_named_in_a_string_is_found(tree: Path) -> None:
    (tree / "harness" / "b.py").write_text('import importlib\nTABLES = ("harness.a",)\n')
    assert import_cycles(tree) == [["harness.a", "harness.b"]]
    (tree / "harness" / "b.py").write_text('x = LazyModule("harness.a")\n')
    assert import_cycles(tree) == [["harness.a", "harness.b"]]
    (tree / "harness" / "b.py").write_text('REF = "harness.a:thing"\n')
    assert import_cycles(tree) == [["harness.a", "harness.b"]]
    (tree / "harness" / "b.py").write_text('"""Imported by harness.a, which it does not import."""\n')
    assert import_cycles(tree) == []


def test_a_long_file_is_found(tree: Path) -> None:
    assert long_files(tree) == []
    (tree / "backends" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_files(tree) == [f"backends/big.py: {MAX_LINES + 1}"]


def test_a_long_file_outside_the_package_and_a_grown_exception_are_found(tree: Path) -> None:
    for rel in ("tests/test_big.py", "faults/harness_faults/big.py", ".venv/lib/big.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x = 1\n" * (MAX_LINES + 1))
    (tree / "backends" / "ascend").mkdir()
    sim = tree / "backends" / "ascend" / "sim.py"
    sim.write_text("x = 1\n" * LONG_ALLOWED["backends/ascend/sim.py"])
    assert long_files(tree) == [f"faults/harness_faults/big.py: {MAX_LINES + 1}", f"tests/test_big.py: {MAX_LINES + 1}"]
    sim.write_text("x = 1\n" * (LONG_ALLOWED["backends/ascend/sim.py"] + 1))
    assert f"backends/ascend/sim.py: {LONG_ALLOWED['backends/ascend/sim.py'] + 1}" in long_files(tree)
