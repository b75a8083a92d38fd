"""Batch invariance in `harness selftest`: the planted batch-variant fault (split-KV for a lone request) passes
parity, is reported not invariant and fails under --require-invariance; cpu-reference is invariant. The checks
are loaded the way selftest loads them (the fault plugin's entry point), and the judge is shown to tell them
apart (each claim made of the wrong backend does not hold)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import selftest
from harness.plugins import load_reference
from harness.results import ResultWriter
from harness.selftest import Check, FaultPlugin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DECODE = ("attention.decode",)
PAGED = ("attention.paged_decode",)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> FaultPlugin:
    """The fault plugin as the `harness.faults` entry point of faults/pyproject.toml names it."""
    project = tomllib.loads((ROOT / "faults" / "pyproject.toml").read_text())["project"]
    [(_, value)] = project["entry-points"][selftest.FAULTS_GROUP].items()
    sys.path.insert(0, str(ROOT / "faults"))  # as `pip install -e faults/` puts it on the path
    try:
        module = load_reference(value, origin="faults/pyproject.toml")
    finally:
        sys.path.remove(str(ROOT / "faults"))
    return FaultPlugin("faults/pyproject.toml", module.CHECKS, module.BACKENDS)


def _run(plugin: FaultPlugin, checks: tuple[Check, ...], tmp_path: Path) -> list[selftest.Outcome]:
    with ResultWriter(tmp_path / "r.jsonl") as writer:
        return selftest.run_selftest(writer, plugins=[FaultPlugin("test", checks, plugin.backends)])


@pytest.mark.slow
def test_the_invariance_checks_hold(plugin: FaultPlugin, tmp_path: Path) -> None:
    checks = tuple(c for c in plugin.checks if c.expect == "not_invariant" or c.require_invariance)
    assert {(c.backend, c.expect) for c in checks} == {
        ("bug-batch-variant", "not_invariant"), ("bug-batch-variant", "caught"), ("cpu-reference", "passes")
    }  # fmt: skip
    outcomes = _run(plugin, checks, tmp_path)
    assert all(o.ok for o in outcomes), [o.problem for o in outcomes]
    assert all(o.cases >= 4 for o in outcomes)
    assert next(o for o in outcomes if o.check.expect == "not_invariant").metrics == ("invariance",)


def test_each_claim_fails_when_made_of_the_wrong_backend(plugin: FaultPlugin, tmp_path: Path) -> None:
    wrong = (
        Check("reference called variant", "cpu-reference", "not_invariant", DECODE, ("float32",)),
        Check("variant called invariant", "bug-batch-variant", "passes", DECODE, ("float32",), require_invariance=True),
        Check("reference under require", "cpu-reference", "caught", DECODE, ("float32",), require_invariance=True),
        Check("variant without require", "bug-batch-variant", "caught", DECODE, ("float32",)),
        # parts: none for the paged form, so "invariant" is never established
        Check("unchecked", "cpu-reference", "passes", PAGED, ("float32",), require_invariance=True),
    )
    outcomes = _run(plugin, wrong, tmp_path)
    problems = [o.problem for o in outcomes]
    assert all(problems), problems
    assert "reported batch invariant = True" in problems[0]
    assert "not batch invariant" in problems[1] and "batch invariance not checked" in problems[4]
