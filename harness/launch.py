"""`harness run` as a library call: plan the cases, run them with a progress line, stream every record to the
JSONL file, print the summary, and return the exit code. The CLI only turns its options into a `RunRequest`."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import interrupts, supervise
from harness import summary as summary_mod
from harness.backend import default_registry
from harness.display import RunProgress
from harness.isolate import IsolationSpec
from harness.parts import finished_with_parts, merge_parts
from harness.port import NOT_JUDGED, port_verdicts
from harness.results import Record, ResultWriter, new_run_id
from harness.run_options import RayConfig
from harness.runner import Runner, RunOptions, RunSummary, UsageError
from harness.suites import Suite
from harness.timing_view import plural
from harness.workload import WorkloadRegistry


@dataclass(frozen=True)
class RunRequest:
    """Everything `harness run` was asked to do."""

    suite: Suite
    options: RunOptions
    plugins: tuple[str, ...] = ()
    inputs_file: str | None = None
    out: Path | None = None
    resume: Path | None = None
    rerun_errors: bool = False
    isolate: bool = False
    case_timeout: float = 600.0
    summary: bool = True  # False: only the final line (--no-table)
    summary_format: str = "text"  # "json": the summary as one JSON object (summary.RunSummary)
    ray: RayConfig | None = None  # --executor ray: case groups as tasks on a Ray cluster (harness.ray_executor)


class RunInterruptedError(Exception):
    """Ctrl-C stopped the sweep; the records written so far are kept."""

    def __init__(self, kept: int, path: Path) -> None:
        super().__init__(f"interrupted: {kept} records kept in {path}")


class RunStoppedError(Exception):
    """The sweep could not go on, or produced nothing: the results file stopped taking records, or something
    called sys.exit outside a case. The records written so far are kept (exit 3)."""


def _os_error(exc: OSError, path: Path) -> str:
    """The OS's words, and the file they are about where it is not the results file itself."""
    text = exc.strerror or str(exc)
    return f"{text} ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else text


def _resume_hint(path: Path) -> str:
    return f"`--resume {path}` runs the rest"


class _Output:
    """The run's ResultWriter, whose OS errors (a full disk, /dev/full, a file-size limit) stop the sweep with
    one line naming the file, instead of a traceback from deep inside the loop."""

    def __init__(self, path: Path, flag: str) -> None:
        self.path = path
        try:
            self.writer = ResultWriter(path)
        except OSError as exc:  # found before any case ran: bad usage
            raise UsageError(f"{flag} {path}: cannot write there: {_os_error(exc, path)}") from None

    @property
    def count(self) -> int:
        return self.writer.count

    def _stopped(self, exc: OSError) -> RunStoppedError:
        kept = f"{self.writer.count} records of this run kept there" if self.path.is_file() else "nothing kept"
        hint = f"; {_resume_hint(self.path)}" if self.path.is_file() else ""
        return RunStoppedError(f"cannot write results to {self.path}: {_os_error(exc, self.path)}; {kept}{hint}")

    def write(self, record: Record) -> None:
        try:
            self.writer.write(record)
        except OSError as exc:
            self.abandon()
            raise self._stopped(exc) from None

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError as exc:
            raise self._stopped(exc) from None

    def abandon(self) -> None:
        """Close after a failure, keeping that failure the one reported."""
        with contextlib.suppress(OSError):
            self.writer.close()


REPEAT_S = 1.0  # a second SIGINT this soon after the first is the same Ctrl-C


class _InterruptFlag:
    """Remembers a Ctrl-C while active, so the sweep stops after the case in flight even where a third-party
    library catches the KeyboardInterrupt and carries on (seen: SIGINT during `import onnxruntime`)."""

    def __init__(self) -> None:
        self.seen = False
        self._when = 0.0
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.seen and now - self._when < REPEAT_S:  # the same Ctrl-C twice: sent to the process group, and
            return  # forwarded by the supervising parent (harness/supervise.py); a later one interrupts again
        self.seen, self._when = True, now
        if interrupts.holding() and not interrupts.pending():  # a native library is initializing: raised once its
            interrupts.hold()  # import is done; a second Ctrl-C (an import that hangs) interrupts at once
            return
        raise KeyboardInterrupt

    def __enter__(self) -> _InterruptFlag:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)  # an ignored SIGINT (a background job) stays so
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _load_inputs(path: str) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        raise UsageError(f"--inputs {path}: cannot read as safetensors: {exc}") from None


def prepare(request: RunRequest, run_id: str | None = None) -> tuple[Runner, list[Any]]:
    """The runner and its planned cases; bad input raises a BadInputError (exit 2) before anything runs.
    `run_id`: the run's id where it is shared (the ranks of a torchrun job); a new one by default."""
    if request.rerun_errors and request.resume is None:
        raise UsageError("--rerun-errors goes with --resume FILE")
    if request.resume is not None and request.out is not None and request.out != request.resume:
        raise UsageError(f"--resume appends to {request.resume}; drop --out {request.out} or make it the same file")
    registry = default_registry(request.plugins)
    workloads = WorkloadRegistry.discover()
    user_inputs = None
    if request.inputs_file is not None:
        selected = workloads.select(request.suite.workloads)
        if len(selected) != 1:
            raise UsageError(
                f"--inputs runs one workload; the selection matches {len(selected)}: "
                f"{', '.join(w.name for w in selected)} (pick one with -w)"
            )
        user_inputs = _load_inputs(request.inputs_file)
    run_id = run_id or new_run_id()
    spec = IsolationSpec(request.suite, request.plugins, request.inputs_file, run_id, request.case_timeout)
    if request.ray is not None:  # each group a Ray task (with --isolate: each case a process on its node)
        from harness.ray_executor import RayRunner

        fanned = RayRunner(
            registry, workloads, request.options, run_id, spec, request.ray, request.isolate, user_inputs
        )
        return fanned, fanned.plan(request.suite)
    isolation = None
    if request.isolate:
        spec_file = Path(tempfile.mkdtemp(prefix="harness-run-")) / "spec.json"
        spec.write(request.options, spec_file)
        isolation = (spec_file, request.case_timeout)
    runner = Runner(registry, workloads, request.options, run_id, user_inputs=user_inputs, isolation=isolation)
    return runner, runner.plan(request.suite)


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    summary: str  # what to print: the summary blocks, or only the final line


def default_out(run_id: str) -> Path:
    return Path("results") / "runs" / f"{run_id}.jsonl"


def launch(request: RunRequest, err: Console) -> RunOutcome:
    """Run the request in this process, progress and notes on `err`; the summary is returned for the caller to
    print. (Under torchrun the CLI runs each rank's share instead: harness/sharded.py.)"""
    runner, cases = prepare(request)
    resumed = request.resume is not None
    done = finished_with_parts(request.resume, rerun_errors=request.rerun_errors) if resumed else {}
    out_path = request.resume or request.out or default_out(runner.run_id)
    previous = [done[c.key] for c in cases if c.key in done]
    plan_keys = [c.key for c in cases]
    cases = [c for c in cases if c.key not in done]
    if request.resume is not None:
        err.print(f"resuming {request.resume}: {len(previous)} cases already recorded, {len(cases)} to run")
    started = time.perf_counter()
    output = _Output(out_path, "--resume" if resumed else "--out")
    supervise.note_output(out_path)
    result, records = sweep(runner, cases, output, RunProgress(err, len(cases)), previous=len(previous))
    if resumed:  # a sharded run's leftover part files (killed ranks): their records join the file now
        merge_parts(out_path, plan_keys)
    if not records and not previous:  # a run that recorded nothing never reports success
        raise RunStoppedError(f"nothing ran: none of {len(cases)} planned cases was recorded in {out_path}")
    for record in previous:
        result.add(record.status)
    return outcome(request, runner, previous + records, result.exit_code, out_path, time.perf_counter() - started)


def sweep(
    runner: Runner, cases: list[Any], output: Any, display: RunProgress, previous: int = 0
) -> tuple[RunSummary, list[Record]]:
    """Run `cases` into `output` (an _Output) with progress on `display`; Ctrl-C and a sys.exit outside a case
    become RunInterruptedError / RunStoppedError, the records written so far kept."""
    records: list[Record] = []
    interrupted = _InterruptFlag()

    def on_record(case: Any, record: Record) -> None:
        records.append(record)
        display.finished(case, record)
        if interrupted.seen:  # a library swallowed the KeyboardInterrupt (onnxruntime's import does)
            raise KeyboardInterrupt

    def on_start(case: Any) -> None:
        supervise.note_case(case.key, output.count)
        display.started(case)

    out_path = output.path
    try:
        with display.shown(), interrupted:
            result = runner.run(cases, output, on_record, on_start=on_start)
    except KeyboardInterrupt:
        output.abandon()
        raise RunInterruptedError(output.count, out_path) from None
    except SystemExit as exc:  # outside a case (a case's own exit is its error record): the sweep cannot go on
        output.abandon()
        what = f"something called sys.exit({exc.code!r}) outside a case"
        if not output.count and not previous:
            raise RunStoppedError(f"nothing ran: {what}, before the first of {len(cases)} cases") from None
        raise RunStoppedError(f"{what}; {output.count} records kept in {out_path}; {_resume_hint(out_path)}") from None
    except BaseException:
        output.abandon()
        raise
    output.close()
    supervise.note_case(None, output.count)
    return result, records


def outcome(
    request: RunRequest,
    runner: Runner,
    everything: list[Record],
    exit_code: int,
    out_path: Path,
    seconds: float,
    unavailable: dict[str, str] | None = None,
) -> RunOutcome:
    """The summary of the run's records (`everything`: the resumed ones included) as the request asks."""
    facts = summary_mod.RunFacts(
        suite=request.suite.name,
        out_path=str(out_path),
        seconds=seconds,
        threads=request.options.threads,
        excluded=runner.excluded,
        unavailable=runner.unavailable() if unavailable is None else unavailable,
        against=None if request.options.against is None else str(request.options.against),
        against_ratio=request.options.against_ratio,
    )
    verdicts = port_verdicts(everything, facts.against, facts.against_ratio)
    if exit_code == 0 and any(v.status == NOT_JUDGED for v in verdicts):
        exit_code = 3  # a port verdict was asked of a backend and none could be given: that is no success
    tested_nothing = bool(everything) and all(r.status == "skipped" for r in everything)
    if exit_code == 0 and tested_nothing:
        exit_code = 3  # `-b cuda` on a CPU machine: every case skipped, and a run that tested nothing never passes
    notes: list[tuple[str, str]] = []  # (what, what to do): why the exit code is not 0 beyond the records
    if tested_nothing:
        notes.append(
            (f"nothing was tested: {plural(len(everything), 'case')} planned, all skipped (exit 3)",
             "see the skip reasons above; choose backends that run here with -b")
        )  # fmt: skip
    unsaved = sum(v.not_saved for v in verdicts)
    if unsaved and not tested_nothing:  # PORT OK over the few cases saved must not read as the port being OK
        exit_code = exit_code or 3
        notes.append(
            (f"{plural(unsaved, 'planned case')} not in the saved run (exit {exit_code})",
             "select what the source saved, or save those cases there too")
        )  # fmt: skip
    note = "".join(f"{what}\n  {todo}\n" for what, todo in notes)
    if request.summary_format == "json":
        notes_json = tuple(f"{what}; {todo}" for what, todo in notes)
        return RunOutcome(exit_code, summary_mod.RunSummary(tuple(everything), facts, exit_code, notes_json).to_json())
    if not request.summary:
        return RunOutcome(exit_code, summary_mod.brief(everything, facts) + note)
    width = shutil.get_terminal_size((80, 24)).columns  # COLUMNS when set; 80 when not a terminal
    return RunOutcome(exit_code, summary_mod.render(everything, facts, width) + note)
