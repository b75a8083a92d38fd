"""Runs that survive: isolation of crashing and hanging cases, resume after SIGKILL, selftest."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.results import read_records
from harness.selftest import Check, FaultPlugin, load_fault_plugins, run_selftest
from tests.conftest import FAULT_CHECKS, FAULTS, PLUGINS

pytestmark = pytest.mark.slow

CRASHING = """
import os, time
from typing import ClassVar
from harness.backends.torch_cpu import TorchCpu

class Crashing(TorchCpu):
    name: ClassVar[str] = "crashing"

    def attention(self, q, k, v, **kw):
        if q.dtype.itemsize == 2 and k.shape[1] == 2:  # float16, the GQA shape: exactly one case
            os.abort()  # what a segfaulting vendor library does to the process
        return super().attention(q, k, v, **kw)

class OutOfMemory(TorchCpu):
    name: ClassVar[str] = "oom"

    def attention(self, q, k, v, **kw):
        import signal
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does

class Hanging(TorchCpu):
    name: ClassVar[str] = "hanging"

    def attention(self, q, k, v, **kw):
        if k.shape[1] == 1:
            time.sleep(600)
        return super().attention(q, k, v, **kw)
"""


@pytest.fixture
def vendor_plugin(tmp_path: Path) -> str:
    path = tmp_path / "vendor.py"
    path.write_text(CRASHING)
    return str(path)


def test_a_segfaulting_case_under_isolate_is_one_crashed_record(harness_cli, vendor_plugin: str) -> None:
    args = ("-w", "attention.decode", "--distribution", "normal", "--dtype", "float32,float16", "--parity-only")
    run = harness_cli("run", "--plugin", vendor_plugin, "-b", "crashing", *args, "--isolate")
    assert run.exit_code == 3
    statuses = {r["case"]["key"]: r["status"] for r in run.records}
    assert len(statuses) == 4 and sorted(statuses.values()) == ["crashed", "passed", "passed", "passed"]
    crashed = next(r for r in run.records if r["status"] == "crashed")
    assert crashed["case"]["dtype"] == "float16" and crashed["case"]["shape"] == "gqa"
    assert "SIGABRT" in crashed["reason"] and "Fatal Python error" in crashed["child_output"]


def test_a_hanging_case_times_out_and_the_sweep_goes_on(harness_cli, vendor_plugin: str) -> None:
    args = ("-w", "attention.decode", "--distribution", "normal", "--dtype", "float32", "--parity-only")
    run = harness_cli("run", "--plugin", vendor_plugin, "-b", "hanging", *args, "--isolate", "--case-timeout", "8")
    assert run.exit_code == 3
    assert {r["case"]["shape"]: r["status"] for r in run.records} == {"gqa": "passed", "mqa": "timeout"}
    assert "--case-timeout 8" in next(r["reason"] for r in run.records if r["status"] == "timeout")


def test_an_oom_killed_case_is_recorded_as_crashed(harness_cli, vendor_plugin: str) -> None:
    args = ("-w", "attention.decode", "--distribution", "normal", "--dtype", "float32", "--shape", "gqa")
    run = harness_cli("run", "--plugin", vendor_plugin, "-b", "oom", *args, "--parity-only", "--isolate")
    assert run.exit_code == 3
    [record] = run.records
    assert record["status"] == "crashed" and "SIGKILL (out of memory?" in record["reason"]


# `harness` with Ctrl-C on, as a terminal's foreground job has it, however the tests were started (a job in the
# background of a non-interactive shell inherits SIGINT ignored, and the harness then rightly ignores it too).
INTERRUPTIBLE_HARNESS = [
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from harness.cli import main; main(sys.argv[1:], prog_name='harness')",
]


def test_ctrl_c_leaves_a_valid_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    cmd = [*INTERRUPTIBLE_HARNESS, "run", "-w", "attention.*,moe.*", "--parity-only", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err[-3000:]
    records = read_records(out)  # valid: every line parses, none half-written
    assert len(records) >= 5 and out.read_text().endswith("\n")


def test_ctrl_c_swallowed_by_a_library_still_stops_the_sweep(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    cmd = [*INTERRUPTIBLE_HARNESS, "run", "-w", "attention.*", "-b", "swallowing-cpu", "--parity-only"]
    proc = subprocess.run(
        [*cmd, "--plugin", str(PLUGINS / "cpu_variants.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 130 and "interrupted: 1 records kept" in proc.stderr
    assert len(read_records(out)) == 1  # the case in flight finished and was kept; no further case ran


def _verdicts(path: Path) -> dict[str, str]:
    return {r.case.key: r.status for r in read_records(path)}


def test_resume_after_sigkill_gives_the_same_cases_and_verdicts(tmp_path: Path) -> None:
    args = ["-w", "attention.*,moe.route", "-b", "cpu-reference,torch-cpu", "--parity-only", "--no-table"]
    harness = [sys.executable, "-m", "harness", "run", *args]
    full = tmp_path / "full.jsonl"
    subprocess.run([*harness, "--out", str(full)], check=True, capture_output=True)
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([*harness, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it midway: some records written, not all
        if killed.exists() and killed.read_text().count("\n") >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = killed.read_text().count("\n")
    assert 20 <= written < len(_verdicts(full))
    with killed.open("a") as fh:  # and a half-written record, as a writer killed mid-line leaves
        fh.write('{"schema_version": 1, "run_id": "x", "case": {"ke')
    resumed = subprocess.run([*harness, "--resume", str(killed)], capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{written} cases already recorded" in " ".join(resumed.stderr.split())
    assert _verdicts(killed) == _verdicts(full)
    assert len(read_records(killed)) == len(_verdicts(full))  # nothing ran twice


def test_rerun_errors_on_resume(harness_cli, tmp_path: Path, vendor_plugin: str) -> None:
    out = tmp_path / "r.jsonl"
    args = ("-w", "attention.decode", "--distribution", "normal", "--dtype", "float32", "--parity-only")
    first = harness_cli(
        "run", "--plugin", vendor_plugin, "-b", "hanging", *args, "--isolate", "--case-timeout", "5", out=out
    )
    assert first.exit_code == 3
    again = harness_cli("run", "--plugin", vendor_plugin, "-b", "hanging", *args, "--resume", str(out))
    assert again.exit_code == 3 and len(read_records(out)) == 2  # the timeout counts as finished
    bad = harness_cli("run", "-b", "torch-cpu", "--rerun-errors")
    assert bad.exit_code == 2 and "--rerun-errors goes with --resume" in bad.output


def test_selftest_exits_0(harness_cli, tmp_path: Path) -> None:
    result = harness_cli("selftest", "--faults", FAULT_CHECKS, "--out", str(tmp_path / "selftest.jsonl"))
    assert result.exit_code == 0, result.output
    checks = load_fault_plugins((FAULT_CHECKS,))[0].checks
    held = re.search(rf"(\d+) of {len(checks)} checks hold(?:, (\d+) skipped)?;", " ".join(result.output.split()))
    assert held and int(held[1]) + int(held[2] or 0) == len(checks), result.output  # skipped: no GPU, one rank
    assert "caught  decode steps with rope positions one ahead" in result.output


def test_selftest_reports_a_fault_that_slips_through(tmp_path: Path) -> None:
    from harness.results import ResultWriter

    # torch-cpu is correct: declared as a fault, it must be reported as slipping through, not as caught.
    check = Check("a correct backend declared faulty", "torch-cpu", "caught", ("attention.decode",), ("float32",))
    with ResultWriter(tmp_path / "r.jsonl") as writer:
        [outcome] = run_selftest(writer, plugins=[FaultPlugin("test", (check,), FAULTS)])
    assert not outcome.ok and "slipped through" in outcome.problem and outcome.good == 0
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == outcome.cases == 4
