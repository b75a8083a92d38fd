"""harness compare: a planted 20% slowdown is flagged, a rerun of the same code is not; parity regressions."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from harness.compare import compare_runs, mann_whitney_p
from harness.parity import Budget, Metrics
from harness.results import CaseRef, ParityRecord, Record, VerdictRecord

TUNABLE = '''
import os, time
from typing import ClassVar
from harness.backends.torch_cpu import TorchCpu

class Tunable(TorchCpu):
    """torch-cpu, plus a busy wait of SLOWDOWN x the op's own time: a planted, exact slowdown."""

    name: ClassVar[str] = "tunable"

    def attention(self, q, k, v, **kw):
        start = time.perf_counter()
        out = super().attention(q, k, v, **kw)
        end = time.perf_counter() + float(os.environ.get("SLOWDOWN", "0")) * (time.perf_counter() - start)
        while time.perf_counter() < end:
            pass
        return out
'''


def test_mann_whitney_against_known_values() -> None:
    rng = np.random.default_rng(0)
    same = mann_whitney_p(rng.normal(0, 1, 300), rng.normal(0, 1, 300))
    shifted = mann_whitney_p(rng.normal(0, 1, 300), rng.normal(0.5, 1, 300))
    assert same > 0.01 and shifted < 1e-6
    assert mann_whitney_p([1, 1, 1], [1, 1, 1]) == 1.0  # all tied: no evidence of a difference


@pytest.mark.slow
def test_planted_slowdown_is_flagged_and_a_rerun_is_not(harness_cli, tmp_path: Path, monkeypatch) -> None:
    plugin = tmp_path / "tunable.py"
    plugin.write_text(TUNABLE)
    args = (
        "run",
        "--plugin",
        str(plugin),
        "-b",
        "tunable",
        "-w",
        "attention.prefill",
        "--preset",
        "small",
        "--distribution",
        "normal",
        "--dtype",
        "float32",
        "--time-budget",
        "0.5",
    )
    old, same, slow = tmp_path / "old.jsonl", tmp_path / "same.jsonl", tmp_path / "slow.jsonl"
    assert harness_cli(*args, out=old).exit_code == 0
    assert harness_cli(*args, out=same).exit_code == 0
    monkeypatch.setenv("SLOWDOWN", "0.2")
    assert harness_cli(*args, out=slow).exit_code == 0
    monkeypatch.delenv("SLOWDOWN")
    rerun = harness_cli("compare", str(old), str(same), "--fail-on", "10%")
    assert rerun.exit_code == 0, rerun.output
    flagged = harness_cli("compare", str(old), str(slow), "--fail-on", "10%")
    assert flagged.exit_code == 1
    assert "**slower**" in flagged.output and "**slower**" not in rerun.output
    assert os.environ.get("SLOWDOWN") is None


def _record(key: str, status: str, rel_l2: float, budget: float = 0.016) -> Record:
    metrics = Metrics(1, 0.0, 0.0, rel_l2, 1.0, rel_l2, 0, [0], 0.0, 0, 0, 0, 0, False, False)
    verdict = VerdictRecord(status == "passed", reason="" if status == "passed" else "rel_l2 over budget")
    return Record(
        "r",
        "t",
        CaseRef.from_dict({"key": key}),
        status,
        verdict.reason,
        parity=ParityRecord(verdict, metrics, Budget(budget, budget, budget, budget, 0.01)),
    )


def test_parity_regressions() -> None:
    old = [
        _record("a", "passed", 2e-3),
        _record("b", "passed", 2e-3),
        _record("c", "passed", 1e-4),
        _record("d", "failed", 0.5),
        _record("e", "passed", 1e-3),
    ]
    new = [
        _record("a", "failed", 0.3),
        _record("b", "passed", 5e-3),
        _record("c", "passed", 8e-4),
        _record("d", "passed", 2e-3),
        dataclasses.replace(_record("e", "error", 0), parity=None),
    ]
    result = compare_runs(old, new)
    kinds = {c.key: c.kind for c in result.changes}
    # c: 8x growth, but of an error under a tenth of the budget: noise, not a regression.
    assert kinds == {"a": "newly_failing", "b": "error_grown", "d": "fixed", "e": "newly_errored"}
    assert {c.key for c in result.regressions} == {"a", "b", "e"}
    text = result.markdown()
    assert text.startswith("## harness compare: 3 regression(s) in 5 common cases")
    assert "| `a` | **newly_failing** |" in text
    json.dumps([c.__dict__ for c in result.changes])
