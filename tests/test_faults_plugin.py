"""The planted faults live in a fault plugin outside the product: its metadata names the module selftest reads,
and without one the selftest says how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import selftest
from harness.plugins import load_reference
from tests.conftest import FAULT_CHECKS, FAULTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_the_fault_plugin_registers_its_checks_under_the_selftest_group(monkeypatch) -> None:
    project = tomllib.loads((ROOT / "faults" / "pyproject.toml").read_text())["project"]
    assert project["name"] == "infer-parity-harness-faults"
    [(_, value)] = project["entry-points"][selftest.FAULTS_GROUP].items()
    monkeypatch.syspath_prepend(str(ROOT / "faults"))  # as `pip install -e faults/` puts it on the path
    module = load_reference(value, origin="faults/pyproject.toml")
    [plugin] = selftest.load_fault_plugins((FAULT_CHECKS,))
    assert plugin.checks == module.CHECKS and Path(FAULTS) in {Path(b) for b in plugin.backend_specs}
    names = {c.backend for c in plugin.checks}
    assert {"bug-ascend-mask-not-inverted", "bug-ascend-default-scale", "bug-ascend-sparse-mode-2"} <= names
    assert {c.backend for c in plugin.checks if c.culprit} <= {c.backend for c in plugin.checks if c.layerwise}


def test_selftest_without_a_fault_plugin_says_how_to_install_one(harness_cli, monkeypatch) -> None:
    monkeypatch.setattr(selftest, "entry_points", lambda group: [])  # none installed, whatever this venv has
    run = harness_cli("selftest")
    assert run.exit_code == 2
    assert run.output.strip().splitlines() == [
        f"error: no fault plugin installed (entry-point group harness.faults): {selftest.INSTALL_HINT}"
    ]
    assert "pip install --no-deps -e faults/" in run.output


def test_a_module_that_is_no_fault_plugin_is_a_usage_error(harness_cli) -> None:
    run = harness_cli("selftest", "--faults", FAULTS)  # the backends file: no CHECKS
    assert run.exit_code == 2
    assert "defines CHECKS" in run.output


@pytest.mark.slow
def test_selftest_catches_each_ascend_fault_and_passes_the_plain_adapter(tmp_path: Path) -> None:
    from harness.results import ResultWriter

    [plugin] = selftest.load_fault_plugins((FAULT_CHECKS,))
    ascend = tuple(c for c in plugin.checks if "ascend" in c.backend and c.min_world == 1)  # dist checks: torchrun
    with ResultWriter(tmp_path / "r.jsonl") as writer:
        outcomes = selftest.run_selftest(writer, plugins=[selftest.FaultPlugin("test", ascend, plugin.backends)])
    assert len(outcomes) == 5 and all(
        o.ok for o in outcomes
    )  # 3 faults, the adapter on parity and timed, [o.problem for o in outcomes]
    assert {o.check.backend for o in outcomes if o.check.expect == "caught"} == {
        "bug-ascend-mask-not-inverted", "bug-ascend-default-scale", "bug-ascend-sparse-mode-2"
    }  # fmt: skip
