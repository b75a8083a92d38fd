"""Hostility at the process level (issue 15): an op that calls sys.exit, a segfault without --isolate, a case
timeout that cannot be enforced, a slow start-up under --isolate, a results file that stops taking records, and
exceptions escaping a command. Each is answered with one line and exit 2 or 3, no traceback (unless --debug),
and the records written before are kept."""

from __future__ import annotations

import os
import pty
import resource
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness import isolate
from harness.launch import RunRequest, prepare
from harness.models.attention import AttentionWorkload
from harness.planning import Planner
from harness.results import read_records
from harness.run_options import RunOptions
from harness.runner import Runner, RunSummary
from harness.suites import resolve_suite
from tests.conftest import plugin

HOSTILE = plugin("hostile_process")
DECODE = ("-w", "attention.decode", "--distribution", "normal", "--dtype", "float32", "--parity-only")
HARNESS = [sys.executable, "-m", "harness"]


def _statuses(records: list[dict]) -> dict[str, str]:
    return {f"{r['case']['shape']}@{r['case']['backend']}": r["status"] for r in records}


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# ----- sys.exit inside a case; a run that records nothing -----


def test_an_op_calling_sys_exit_is_an_error_record_and_the_sweep_goes_on(harness_cli) -> None:
    run = harness_cli("run", "--plugin", HOSTILE, "-b", "exiting,torch-cpu", *DECODE)
    assert run.exit_code == 3, run.output
    assert _statuses(run.records) == {
        "gqa@exiting": "error",
        "gqa@torch-cpu": "passed",
        "mqa@exiting": "error",
        "mqa@torch-cpu": "passed",
    }
    reasons = {r["reason"] for r in run.records if r["status"] == "error"}
    assert reasons == {"the case called sys.exit(0), which would have ended the run"}


def _exit_in_inputs(monkeypatch: pytest.MonkeyPatch, after_groups: int) -> None:
    """Plant a sys.exit(0) in input generation (outside any case), after `after_groups` groups were made."""
    made = []
    original = AttentionWorkload.make_inputs

    def make_inputs(self, *args, **kwargs):
        if len(made) >= after_groups:
            sys.exit(0)
        made.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AttentionWorkload, "make_inputs", make_inputs)


def test_a_run_that_records_nothing_never_exits_0(harness_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _exit_in_inputs(monkeypatch, after_groups=0)
    run = harness_cli("run", "-b", "torch-cpu", *DECODE)
    assert run.exit_code == 3 and not run.records
    assert "error: nothing ran: something called sys.exit(0) outside a case, before the first of 2 cases" in (
        run.output
    )
    _no_traceback(run.output)


def test_a_sweep_that_returns_without_records_is_not_success(harness_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule itself, whatever the cause: a planted runner loop that returns having recorded nothing."""
    monkeypatch.setattr(Runner, "run", lambda self, cases, writer, on_record=None, on_start=None: RunSummary())
    run = harness_cli("run", "-b", "torch-cpu", *DECODE)
    assert run.exit_code == 3
    assert "error: nothing ran: none of 2 planned cases was recorded in" in run.output
    _no_traceback(run.output)


def test_an_exit_outside_a_case_keeps_the_records_and_says_how_to_resume(
    harness_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _exit_in_inputs(monkeypatch, after_groups=1)
    out = tmp_path / "r.jsonl"
    run = harness_cli("run", "-b", "cpu-reference,torch-cpu", *DECODE, out=out)
    assert run.exit_code == 3 and len(run.records) == 2  # the first group's two cases
    assert f"2 records kept in {out}; `--resume {out}` runs the rest" in " ".join(run.output.split())
    _no_traceback(run.output)


def test_a_plugin_that_exits_at_import_is_a_broken_plugin(harness_cli, tmp_path: Path) -> None:
    path = tmp_path / "exits.py"
    path.write_text("import sys\nsys.exit(0)\n")
    run = harness_cli("run", "--plugin", str(path), "-b", "torch-cpu", *DECODE)
    assert run.exit_code == 2 and not run.records
    assert f"error: plugin file '{path}' failed to import: SystemExit: 0" in run.output


def test_a_probe_that_exits_is_an_error_record(harness_cli, tmp_path: Path) -> None:
    path = tmp_path / "exit_probe.py"
    path.write_text(
        "import sys\nfrom harness.backends.torch_cpu import TorchCpu\n\n\n"
        "class ExitProbe(TorchCpu):\n    name = 'exit-probe'\n\n    @classmethod\n"
        "    def probe(cls):\n        sys.exit(0)\n"
    )
    run = harness_cli("run", "--plugin", str(path), "-b", "exit-probe,torch-cpu", *DECODE)
    assert run.exit_code == 3
    assert sorted(_statuses(run.records).values()) == ["error", "error", "passed", "passed"]


def test_an_exit_while_the_run_is_planned_is_not_success(harness_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Planner, "plan", lambda self, suite: sys.exit(0))
    run = harness_cli("run", "-b", "torch-cpu", *DECODE)
    assert run.exit_code == 3 and not run.records
    assert "error: nothing ran: something called sys.exit(0) while the run was set up" in run.output
    _no_traceback(run.output)


# ----- a segfault without --isolate -----


def test_a_segfault_without_isolate_names_the_case_the_file_and_the_way_on(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    args = [*HARNESS, "run", "--plugin", HOSTILE, "-b", "torch-cpu,segfaulting", *DECODE, "--shape", "gqa"]
    crashed = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, check=False)
    assert crashed.returncode == 3, crashed.stderr
    assert "Fatal Python error: Segmentation fault" in crashed.stderr  # faulthandler's stack
    assert "in attention" in crashed.stderr
    line = crashed.stderr.strip().splitlines()[-1]
    key = "attention.decode/tiny/gqa/float32/normal/seed0@segfaulting"
    assert line == (
        f"error: harness run was killed by SIGSEGV while running {key}; 1 record of this run is in {out}; "
        f"rerun with --isolate (a crash then costs one record) and --resume {out} to run the rest"
    )
    assert _statuses([r.to_dict() for r in read_records(out)]) == {"gqa@torch-cpu": "passed"}  # kept
    resumed = subprocess.run([*args, "--resume", str(out), "--isolate"], capture_output=True, text=True, check=False)
    assert resumed.returncode == 3, resumed.stderr  # the crash is now one record, and the run is complete
    assert _statuses([r.to_dict() for r in read_records(out)]) == {
        "gqa@torch-cpu": "passed",
        "gqa@segfaulting": "crashed",
    }


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform != "linux", reason="the supervisor is Linux-only")
def test_the_run_dies_with_its_supervisor_and_obeys_signals_sent_to_it(tmp_path: Path) -> None:
    """kill -9 of the command takes the process running the cases with it (no orphan appending to the file a
    --resume is about to complete); SIGTERM sent to the command alone is forwarded."""
    for sig in (signal.SIGKILL, signal.SIGTERM):
        out = tmp_path / f"{sig.name}.jsonl"
        cmd = [*HARNESS, "run", "--plugin", HOSTILE, "-b", "hanging", *DECODE, "--out", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(out.exists)  # the results file is opened just before the first case, which hangs
        time.sleep(0.5)
        [child] = _children(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        _wait_for(lambda child=child: not Path(f"/proc/{child}").exists() or _zombie(child), 10)
        if sig == signal.SIGTERM:
            assert proc.returncode == 3 and "error: harness run was killed by SIGTERM" in err


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="the supervisor is Linux-only")
def test_ctrl_c_at_a_terminal_stops_the_supervised_run_once(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the supervisor and the run alike (not forwarded a second time): one
    'interrupted' line, exit 130, the records kept."""
    out = tmp_path / "r.jsonl"
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        os.execv(
            sys.executable,
            [*HARNESS, "run", "-w", "attention.*", "-b", "torch-cpu", "--parity-only", "--out", str(out)],
        )
    text = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 3):
            if select.select([fd], [], [], 0.05)[0]:
                text += os.read(fd, 65536)
        os.write(fd, b"\x03")
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed: the run ended
                break
            if not chunk:
                break
            text += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    output = text.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 130, output
    assert output.count("interrupted") == 1 and "records kept in" in output
    _no_traceback(output)
    assert len(read_records(out)) >= 3


# ----- --case-timeout -----


def test_case_timeout_without_isolate_is_refused(harness_cli) -> None:
    run = harness_cli("run", "-b", "torch-cpu", *DECODE, "--case-timeout", "5")
    assert run.exit_code == 2 and not run.records
    assert "error: --case-timeout 5 needs --isolate" in run.output
    _no_traceback(run.output)


def test_a_slow_start_up_does_not_count_against_the_case_timeout(harness_cli, monkeypatch) -> None:
    # Each child's start-up (5 s) is longer than the case's timeout (4 s, room for a loaded 2-core machine).
    monkeypatch.setenv("HOSTILE_IMPORT_SLEEP", "5")
    run = harness_cli(
        "run", "--plugin", HOSTILE, "-b", "torch-cpu", *DECODE, "--shape", "gqa", "--isolate", "--case-timeout", "4"
    )
    assert run.exit_code == 0, run.output
    assert _statuses(run.records) == {"gqa@torch-cpu": "passed"}


def test_a_hanging_case_after_a_slow_start_up_still_times_out(harness_cli, monkeypatch) -> None:
    monkeypatch.setenv("HOSTILE_IMPORT_SLEEP", "2.5")
    run = harness_cli(
        "run", "--plugin", HOSTILE, "-b", "hanging", *DECODE, "--shape", "gqa", "--isolate", "--case-timeout", "1.5"
    )
    assert run.exit_code == 3
    [record] = run.records
    assert record["status"] == "timeout"
    assert record["reason"].startswith("the case ran past --case-timeout 1.5 s and was killed (its process's start-up")


def test_a_start_up_past_its_own_limit_is_a_timeout_that_says_so() -> None:
    suite = replace(resolve_suite("smoke"), workloads=("attention.decode",), backends=("torch-cpu",))
    request = RunRequest(suite, RunOptions(parity_only=True), isolate=True)
    runner, cases = prepare(request)
    executor = runner.executor
    assert isinstance(executor, isolate.IsolatedExecutor)
    record = isolate.run_case(runner.in_process, executor.spec_path, cases[0], timeout_s=60, startup_s=0.2)
    assert record.status == "timeout"
    assert "did not finish its start-up (imports, plugins, inputs) within 0.2 s" in record.reason


# ----- the results file -----


def test_out_on_dev_full_is_one_line_and_exit_3(harness_cli) -> None:
    run = harness_cli("run", "-b", "torch-cpu", *DECODE, "--out", "/dev/full")
    assert run.exit_code == 3
    assert "error: cannot write results to /dev/full: No space left on device" in run.output
    _no_traceback(run.output)


def test_out_where_no_file_can_be_is_bad_usage(harness_cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = blocker / "r.jsonl"
    run = harness_cli("run", "-b", "torch-cpu", *DECODE, "--out", str(target))
    assert run.exit_code == 2
    assert f"error: --out {target}: cannot write there:" in run.output
    _no_traceback(run.output)


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG (not SIGXFSZ's core dump)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_a_results_file_that_stops_taking_records_keeps_them_and_resume_completes_it(tmp_path: Path) -> None:
    args = [*HARNESS, "run", "-w", "attention.decode", "-b", "cpu-reference,torch-cpu", "--parity-only", "--no-table"]
    full = tmp_path / "full.jsonl"
    subprocess.run([*args, "--out", str(full)], check=True, capture_output=True)
    sizes = [len(line) + 1 for line in full.read_text().splitlines()]
    out = tmp_path / "r.jsonl"
    limit = sum(sizes[:3]) + sizes[3] // 2  # three records fit, the fourth is cut off mid-line
    stopped = subprocess.run(
        [*args, "--out", str(out)], capture_output=True, text=True, check=False, preexec_fn=_file_size_limit(limit)
    )
    assert stopped.returncode == 3
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"error: cannot write results to {out}: File too large; 3 records of this run kept there; "
        f"`--resume {out}` runs the rest"
    )
    _no_traceback(stopped.stderr)
    assert len(read_records(out)) == 3
    resumed = subprocess.run([*args, "--resume", str(out)], capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert {r.case.key: r.status for r in read_records(out)} == {r.case.key: r.status for r in read_records(full)}
    assert len(read_records(out)) == len(sizes)


# ----- exceptions that escape a command -----


def test_an_exception_escaping_a_command_is_one_line_unless_debug(harness_cli) -> None:
    raising = plugin("hostile_raising")
    run = harness_cli("list", "--plugin", raising)
    assert run.exit_code == 3
    assert run.output.strip().splitlines()[-1] == (
        "error: RuntimeError: capabilities exploded (rerun with --debug for the traceback)"
    )
    _no_traceback(run.output)
    debug = harness_cli("--debug", "list", "--plugin", raising)
    assert debug.exit_code == 3
    assert "Traceback" in debug.output and 'raise RuntimeError("capabilities exploded")' in debug.output
