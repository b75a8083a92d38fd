"""The prepared GPU checks (scripts/gpu_pending.sh and the scripts it stands for) must start on a GPU: a session is
lent one for 15 minutes at most, so a typo in a command line, a shape missing at its preset or a missing file
would waste it. Their check mode runs each command's CPU stand-in (scripts/gpu_dryrun.py) in seconds."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.backend import default_registry

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("gpu_dryrun", ROOT / "scripts" / "gpu_dryrun.py")
assert _SPEC is not None and _SPEC.loader is not None
gpu_dryrun = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_dryrun)  # a script, not a package module

PY = sys.executable
STEPS = 12  # scripts/gpu_pending.sh's steps


def test_every_step_of_gpu_pending_parses_and_plans_cases_a_gpu_would_run() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_pending.sh"), PY],
        capture_output=True,
        text=True,
        env={**os.environ, "GPU_PENDING_CHECK": "1"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "FAILED" not in proc.stderr
    for n in range(1, STEPS + 1):  # every step had its stand-in run
        assert f"== check step {n} (" in proc.stderr, f"step {n} not checked"
    assert "supported by their backend" in proc.stdout and "tests collected" in proc.stdout


def test_the_steps_fit_two_calls_of_the_run_tool_and_the_session_budget() -> None:
    """The documented two calls (steps 1-4, 5-10) stay under the tool's 600 s per command and 660 s together."""
    limits = {}
    for line in (ROOT / "scripts" / "gpu_pending.sh").read_text().splitlines():
        if line.startswith("step "):
            n, _, limit = line.split()[1:4]
            limits[int(n)] = int(limit)
    assert sorted(limits) == list(range(1, STEPS + 1))
    first, second = sum(limits[n] for n in range(1, 5)), sum(limits[n] for n in range(5, 11))
    assert first <= 600 and second <= 600 and first + second <= 660, (first, second)


@pytest.mark.parametrize(
    "script,steps",
    [("benchmarks/cuda_quant.sh", ["8", "9", "10", "12"]), ("scripts/gpu_check_issue22.sh", ["1", "6", "7", "11"])],
)
def test_the_standalone_gpu_scripts_are_selections_of_its_steps(script: str, steps: list[str]) -> None:
    """So the test above checks their commands too (GPU_PENDING_CHECK=list prints the selected steps' commands)."""
    proc = subprocess.run(
        ["bash", str(ROOT / script), PY],
        capture_output=True,
        text=True,
        env={**os.environ, "GPU_PENDING_CHECK": "list"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[0] for line in proc.stdout.splitlines()] == steps


RUN = [PY, "-m", "harness.cli", "run", "-b", "cuda", "--preset", "real", "--dtype", "bfloat16"]


@pytest.mark.parametrize(
    "argv,code",
    [
        ([*RUN, "-w", "attention.mla_decode", "--shape", "mla-b32-s8"], 2),  # no such shape
        ([*RUN, "-w", "attention.decode", "--shape", "llama3-8b", "--time-budgett", "1"], 2),  # no such option
        ([*RUN, "-w", "attention.decode,attention.mla_decode", "--shape", "mla-b32-s8k"], 1),  # decode plans nothing
        ([*RUN[:-1], "float64", "-w", "attention.decode"], 1),  # planned, but cuda computes no float64
        ([PY, "-m", "harness.cli", "selftest"], 2),  # no --faults: nothing to load in an uninstalled checkout
        ([PY, "-m", "harness.cli", "selftest", "--fault", "harness_faults.cuda_checks"], 2),  # no such option
        ([PY, "-m", "harness.cli", "calibrate", "-b", "cuda-typo"], 2),
        ([PY, "-m", "pytest", "-q", "tests/test_no_such_file.py"], 2),
        ([PY, "benchmarks/cuda_bar.py", "--only", "mo"], 2),  # an unknown section
        ([PY, "benchmarks/no_such_bench.py"], 2),
    ],
)
def test_the_stand_in_refuses_a_command_that_would_waste_the_gpu(argv: list[str], code: int) -> None:
    assert gpu_dryrun.main(argv) == code


def test_the_cuda_selftest_block_holds_every_check_that_runs_on_cuda() -> None:
    """Step 2 runs harness_faults.cuda_checks alone: a cuda check added to checks.py must land there too."""
    from harness.selftest import load_fault_plugins

    (full,) = load_fault_plugins(("harness_faults.checks",))
    (cuda,) = load_fault_plugins(("harness_faults.cuda_checks",))
    every = default_registry(full.backend_specs)
    on_cuda = [c for c in full.checks if every.get(c.backend).device == "cuda"]
    assert on_cuda and list(cuda.checks) == on_cuda
