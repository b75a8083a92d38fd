"""--isolate: each case in a child process with a time limit, so a vendor library that segfaults, hangs or runs
out of memory costs one record (crashed / timeout / error, with the child's last output), not the sweep.

The parent writes the run's specification (suite, options, plugins, inputs file) to a JSON file once; each child
(`python -m harness.isolate SPEC CASE_KEY OUT`) rebuilds the registries, plans the same cases, runs the one
named with the in-process executor, and writes its record to OUT. `IsolatedExecutor` is the parent's side: an
executor of the runner's loop like the in-process one.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from harness.executor import CaseExecutor, Prepared
from harness.lazy import torch
from harness.planning import Planner
from harness.results import Record
from harness.run_options import RunOptions
from harness.suites import Suite
from harness.timing import TimingConfig
from harness.workload import Case

log = logging.getLogger(__name__)

OUTPUT_TAIL = 4000  # characters of the child's output kept in a crashed / timeout record


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
    data["budget_overrides"] = None if options.budget_overrides is None else dict(options.budget_overrides)
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

    def execute(self, case: Case, prepared: Prepared) -> Record:
        return run_case(self.local, self.spec_path, case, self.timeout_s)

    def unavailable(self) -> dict[str, str]:
        return self.local.unavailable()


def run_case(local: CaseExecutor, spec_path: Path, case: Case, timeout_s: float) -> Record:
    """Run one case in a child; always returns a record, whatever happened to the child."""
    with tempfile.TemporaryDirectory(prefix="harness-case-") as tmp:
        out = Path(tmp) / "record.json"
        cmd = [sys.executable, "-m", "harness.isolate", str(spec_path), case.key, str(out)]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
            output, returncode = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            output, returncode = exc.output or b"", None
        text = output.decode(errors="replace")[-OUTPUT_TAIL:] if output else ""
        if returncode == 0 and out.exists():
            return Record.from_dict(json.loads(out.read_text()), f"child record of {case.key}")
    if returncode is None:
        status, reason = "timeout", f"the case ran past --case-timeout {timeout_s:g} s and was killed"
    elif returncode < 0:
        name = _signal_name(returncode)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        status, reason = "crashed", f"the case's process was killed by {name}{hint}"
    else:
        status, reason = "error", f"the case's process exited with code {returncode} without a record"
    return local.placeholder(case, status=status, reason=reason, child_output=text)


def child_main(argv: list[str]) -> int:
    """`python -m harness.isolate SPEC CASE_KEY OUT`: run one case of the parent's plan."""
    from safetensors.torch import load_file

    from harness.backend import default_registry
    from harness.workload import WorkloadRegistry

    spec_path, key, out = argv
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
    record = CaseExecutor(backends, planner, options, spec.run_id).run_one(case)
    Path(out).write_text(json.dumps(record.to_dict(), allow_nan=True))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    faulthandler.enable()  # a segfault or abort prints the Python stack into the record's child_output
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(child_main(sys.argv[1:]))
