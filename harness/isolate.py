"""--isolate: each case in a child process with a time limit, so a vendor library that segfaults, hangs or runs
out of memory costs one record (crashed / timeout / error, with the child's last output), not the sweep.

The parent writes the run's specification (suite, options, plugins, inputs file) to a JSON file once; each child
(`python -m harness.isolate SPEC CASE_KEY OUT`) rebuilds the registries, plans the same cases, runs the one
named, and writes its record to OUT.
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
from typing import TYPE_CHECKING, Any

from harness.suites import Suite
from harness.timing import TimingConfig

if TYPE_CHECKING:
    from harness.runner import Runner, RunOptions
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
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
            "plugins": list(self.plugins),
            "inputs_file": self.inputs_file,
            "run_id": self.run_id,
            "timeout_s": self.timeout_s,
        }
        path.write_text(json.dumps(data))


def _read_spec(path: Path) -> tuple[IsolationSpec, RunOptions]:
    from harness.runner import RunOptions

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


def run_case(runner: Runner, spec_path: Path, case: Case, timeout_s: float) -> dict[str, Any]:
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
            return json.loads(out.read_text())
    record = runner.placeholder_record(case)
    if returncode is None:
        record.update(status="timeout", reason=f"the case ran past --case-timeout {timeout_s:g} s and was killed")
    elif returncode < 0:
        name = _signal_name(returncode)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        record.update(status="crashed", reason=f"the case's process was killed by {name}{hint}")
    else:
        record.update(status="error", reason=f"the case's process exited with code {returncode} without a record")
    record["child_output"] = text
    return record


def child_main(argv: list[str]) -> int:
    """`python -m harness.isolate SPEC CASE_KEY OUT`: run one case of the parent's plan."""
    from safetensors.torch import load_file

    from harness.backend import default_registry
    from harness.runner import Runner
    from harness.workload import WorkloadRegistry

    spec_path, key, out = argv
    spec, options = _read_spec(Path(spec_path))
    user_inputs = load_file(spec.inputs_file) if spec.inputs_file else None
    runner = Runner(
        default_registry(spec.plugins), WorkloadRegistry.discover(), options, spec.run_id, user_inputs=user_inputs
    )
    case = next((c for c in runner.plan(spec.suite) if c.key == key), None)
    if case is None:
        log.error("case %r is not in the plan", key)
        return 2
    Path(out).write_text(json.dumps(runner.run_one(case)))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    faulthandler.enable()  # a segfault or abort prints the Python stack into the record's child_output
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(child_main(sys.argv[1:]))
