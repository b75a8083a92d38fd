"""--isolate: each case in a child process with a time limit, so a vendor library that segfaults, hangs or runs
out of memory costs one record (crashed / timeout / error, with the child's last output), not the sweep.

The parent writes the run's specification (suite, options, plugins, inputs file) to a JSON file once; each child
(`python -m harness.isolate SPEC CASE_KEY OUT [READY_FD]`) rebuilds the registries, plans the same cases,
prepares the inputs of the one named, says "ready" on READY_FD (the case's clock starts there), runs it with the
in-process executor, and writes its record to OUT. `IsolatedExecutor` is the parent's side: an
executor of the runner's loop like the in-process one.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from harness.executor import CaseExecutor, Prepared
from harness.lazy import torch
from harness.planning import Planner
from harness.results import Record
from harness.run_options import RunOptions, Skip
from harness.suites import Suite
from harness.timing import TimingConfig
from harness.workload import Case

log = logging.getLogger(__name__)

OUTPUT_TAIL = 4000  # characters of the child's output kept in a crashed / timeout record
STARTUP_TIMEOUT_S = 600.0  # a child's imports, plugin load and input preparation, apart from --case-timeout


@dataclass(frozen=True)
class IsolationSpec:
    """What a child needs to rebuild the parent's runner."""

    suite: Suite
    plugins: tuple[str, ...]
    inputs_file: str | None
    run_id: str
    timeout_s: float

    def write(self, options: RunOptions, path: Path) -> None:
        data = {
            "suite": asdict(self.suite),
            "options": _options_data(options),
            "plugins": list(self.plugins),
            "inputs_file": self.inputs_file,
            "run_id": self.run_id,
            "timeout_s": self.timeout_s,
        }
        path.write_text(json.dumps(data))


def _options_data(options: RunOptions) -> dict[str, Any]:
    """RunOptions as JSON values (paths as strings, mappings as objects; --backend-option values included)."""
    data = {f.name: getattr(options, f.name) for f in fields(options)}
    data["timing"] = asdict(options.timing)
    for name in ("budget_overrides", "format_budget_overrides"):
        data[name] = None if getattr(options, name) is None else dict(getattr(options, name))
    data["backend_options"] = {name: dict(opts) for name, opts in options.backend_options.items()}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def _read_spec(path: Path) -> tuple[IsolationSpec, RunOptions]:
    data = json.loads(Path(path).read_text())
    suite_data = data["suite"]
    suite = Suite(
        **{
            f.name: (
                TimingConfig(**suite_data[f.name])
                if f.name == "timing"
                else tuple(suite_data[f.name])
                if isinstance(suite_data[f.name], list)
                else suite_data[f.name]
            )
            for f in fields(Suite)
        }
    )
    opts = dict(data["options"])
    opts["timing"] = TimingConfig(**opts["timing"])
    if opts.get("save_outputs"):
        opts["save_outputs"] = Path(opts["save_outputs"])
    spec = IsolationSpec(suite, tuple(data["plugins"]), data["inputs_file"], data["run_id"], data["timeout_s"])
    return spec, RunOptions(**opts)


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class IsolatedExecutor:
    """Executes each case in a child process (the executor interface of harness/executor.py); a child that
    dies or runs past the timeout still yields a record, built by the in-process executor's `placeholder`."""

    def __init__(self, local: CaseExecutor, spec_path: Path, timeout_s: float) -> None:
        self.local = local  # builds the records of children that died; prepares nothing itself
        self.spec_path = Path(spec_path)
        self.timeout_s = timeout_s

    def prepare(self, case: Case) -> Prepared:
        """Nothing: each child prepares its own case's inputs."""
        return None

    def unrunnable(self, case: Case) -> Skip | None:
        """None: whether a backend can run is found in the child (probing a crashing backend here would defeat
        the isolation), and no inputs are made here anyway."""
        return None

    def execute(self, case: Case, prepared: Prepared) -> Record:
        if self.local.planner.workloads.get(case.workload).collective:
            # the ranks' process group lives in this process: a child would run the case as a world of one
            return self.local.execute(case, None)
        return run_case(self.local, self.spec_path, case, self.timeout_s)

    def unavailable(self) -> dict[str, str]:
        return self.local.unavailable()


def run_case(
    local: CaseExecutor, spec_path: Path, case: Case, timeout_s: float, startup_s: float = STARTUP_TIMEOUT_S
) -> Record:
    """Run one case in a child; always returns a record, whatever happened to the child. The case's clock
    (`timeout_s`) starts when the child says it is ready (imported, plugins loaded, inputs made); its start-up
    has a limit of its own (`startup_s`), so a loaded machine's slow imports do not turn into case timeouts."""
    with tempfile.TemporaryDirectory(prefix="harness-case-") as tmp:
        out, log_path = Path(tmp) / "record.json", Path(tmp) / "output.txt"
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, "-m", "harness.isolate", str(spec_path), case.key, str(out), str(ready_w)]
        try:
            with log_path.open("wb") as log_fh:
                proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, pass_fds=(ready_w,))
            os.close(ready_w)
            ended = _watch(proc, ready_r, timeout_s, startup_s)
        finally:
            os.close(ready_r)
        text = _tail(log_path)
        if ended.returncode == 0 and out.exists():
            return Record.from_dict(json.loads(out.read_text()), f"child record of {case.key}")
    returncode = ended.returncode
    if ended.late == "start-up":
        status = "timeout"
        reason = (
            f"the case's process did not finish its start-up (imports, plugins, inputs) within {startup_s:g} s "
            "and was killed; the case itself never ran"
        )
    elif ended.late == "case":
        status = "timeout"
        reason = (
            f"the case ran past --case-timeout {timeout_s:g} s and was killed "
            f"(its process's start-up, {ended.startup_s:.1f} s, not counted)"
        )
    elif returncode is not None and returncode < 0:
        name = _signal_name(returncode)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        status, reason = "crashed", f"the case's process was killed by {name}{hint}"
    else:
        status, reason = "error", f"the case's process exited with code {returncode} without a record"
    return local.placeholder(case, status=status, reason=reason, child_output=text)


@dataclass(frozen=True)
class _Ended:
    returncode: int | None
    late: str | None = None  # "start-up" or "case": killed for running past that limit
    startup_s: float = 0.0


def _watch(proc: subprocess.Popen[bytes], ready_fd: int, timeout_s: float, startup_s: float) -> _Ended:
    """Wait for the child: its start-up until it writes to `ready_fd` (or closes it by exiting), then the case."""
    started = time.monotonic()
    try:
        readable, _, _ = select.select([ready_fd], [], [], startup_s)
        if not readable:
            return _Ended(_kill(proc), "start-up", time.monotonic() - started)
        os.read(ready_fd, 64)  # b"ready", or b"" when the child ended before it was ready
        startup = time.monotonic() - started
        try:
            return _Ended(proc.wait(timeout=timeout_s), None, startup)
        except subprocess.TimeoutExpired:
            return _Ended(_kill(proc), "case", startup)
    except BaseException:  # Ctrl-C in the parent: the child goes too
        _kill(proc)
        raise


def _kill(proc: subprocess.Popen[bytes]) -> int:
    proc.kill()
    return proc.wait()


def _tail(path: Path) -> str:
    """The last OUTPUT_TAIL characters of the child's output."""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 4 * OUTPUT_TAIL))
        return fh.read().decode(errors="replace")[-OUTPUT_TAIL:]


def child_main(argv: list[str]) -> int:
    """`python -m harness.isolate SPEC CASE_KEY OUT [READY_FD]`: run one case of the parent's plan."""
    from safetensors.torch import load_file

    from harness.backend import default_registry
    from harness.workload import WorkloadRegistry

    spec_path, key, out, *ready = argv
    spec, options = _read_spec(Path(spec_path))
    user_inputs = load_file(spec.inputs_file) if spec.inputs_file else None
    backends = default_registry(spec.plugins)
    planner = Planner(backends, WorkloadRegistry.discover(), model_path=options.model_path, user_inputs=user_inputs)
    case = next((c for c in planner.plan(spec.suite) if c.key == key), None)
    if case is None:
        log.error("case %r is not in the plan", key)
        return 2
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    executor = CaseExecutor(backends, planner, options, spec.run_id)
    prepared = executor.prepare(case)
    if ready:  # start-up is over: the parent's case clock starts now
        os.write(int(ready[0]), b"ready")
        os.close(int(ready[0]))
    record = executor.execute(case, prepared)
    Path(out).write_text(json.dumps(record.to_dict(), allow_nan=True))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    faulthandler.enable()  # a segfault or abort prints the Python stack into the record's child_output
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(child_main(sys.argv[1:]))
