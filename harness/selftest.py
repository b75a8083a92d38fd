"""`harness selftest`: proof that the parity checks catch real mistakes and do not fail correct code.

The faults live outside the product, in a fault plugin (this repository's `faults/`, distribution
infer-parity-harness-faults, registered under the entry-point group `harness.faults`): a module that defines
`CHECKS` (a tuple of `Check`) and `BACKENDS` (the module or .py file of their backend classes). This is the engine:
every planted fault runs through the ordinary runner on the cases where it must show, and every correct-but-
different implementation on the cases it must pass. A fault is caught only if EVERY one of its cases fails (and,
where a check names a culprit, the layer-wise localization names that layer and op). A timing cheat (memoized
outputs, a stale output buffer, a write into an input, work on a side stream) passes parity by construction: it is
caught only if EVERY timed case has an invalid timing whose reason names the check meant to catch it; and an honest
backend checked with timing must have every timing valid. A batch-variant kernel (its output depends on the batch it
is served in, within the parity budgets) passes parity too: it is `not_invariant` only if EVERY case passes parity
and is reported not batch invariant (`--invariance`); under `--require-invariance` (a check's `require_invariance`)
it must fail with the invariance reason, and an honest backend must pass with every case checked and invariant.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backend import BackendRegistry, default_registry
from harness.names import BadInputError
from harness.plugins import PluginError, entry_points, import_plugin
from harness.results import Record
from harness.runner import Runner, RunOptions
from harness.suites import Suite
from harness.timing import TimingConfig
from harness.workload import WorkloadRegistry

if TYPE_CHECKING:
    from harness.parity_llm import OpError

log = logging.getLogger(__name__)

FAULTS_GROUP = "harness.faults"
INSTALL_HINT = "pip install --no-deps -e faults/ (make setup does), or name one with --faults MODULE_OR_FILE"


EXPECTATIONS = ("caught", "passes", "timing_invalid", "not_invariant")
SELFTEST_TIMING = TimingConfig(budget_s=0.03, warmup_s=0.005, min_samples=3, max_samples=50)  # short: a verdict


@dataclass(frozen=True)
class Check:
    """One selftest claim: `backend` on these cases is `caught` (the case fails; with `reasons`, for a reason
    containing one of them), `passes` (parity passes and, when timed, every timing is valid; with
    `require_invariance`, every case also checked and batch invariant), `timing_invalid` (every timed case's timing
    is flagged invalid, with a reason containing one of `reasons`, case-insensitive) or `not_invariant` (parity
    passes and the case is reported not batch invariant, run with --invariance)."""

    description: str
    backend: str
    expect: str  # one of EXPECTATIONS
    workloads: tuple[str, ...]
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    shapes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("normal", "stress")
    layerwise: bool = False  # run with layer-wise localization (workloads with layers: the LLMs)
    culprit: tuple[int, str] | None = None  # the (layer, op kind) the localization must name (needs layerwise)
    presets: tuple[str, ...] = ("tiny",)
    timed: bool = False  # time the cases (SELFTEST_TIMING); implied by expect="timing_invalid"
    time_oracles: bool = False  # time reference backends too (cpu-reference)
    reasons: tuple[str, ...] = ()  # timing_invalid: phrases of the check that must flag it (one must appear)
    backend_options: tuple[tuple[str, str], ...] = ()  # (option, value) the backend is created with
    require_invariance: bool = False  # run with --require-invariance (a part alone that differs fails the case)
    min_world: int = 1  # ranks the check needs (distributed faults show only on 2+): fewer is a skip saying so

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"Check {self.description!r}: expect {self.expect!r}; one of {', '.join(EXPECTATIONS)}")
        if self.expect == "timing_invalid" and not self.reasons:
            raise ValueError(f"Check {self.description!r}: a timing_invalid check names the `reasons` it expects")

    @property
    def is_timed(self) -> bool:
        return self.timed or self.expect == "timing_invalid"


@dataclass(frozen=True)
class FaultPlugin:
    """One fault plugin: its checks and the module or file defining their backends."""

    origin: str
    checks: tuple[Check, ...]
    backends: str | tuple[str, ...]  # one module or file, or several

    @property
    def backend_specs(self) -> tuple[str, ...]:
        return (self.backends,) if isinstance(self.backends, str) else tuple(self.backends)


class NoFaultPluginError(BadInputError):
    """No fault plugin installed or named: the selftest has nothing to prove."""


def load_fault_plugins(specs: tuple[str, ...] = ()) -> list[FaultPlugin]:
    """The named fault modules (a module name or .py file), else those of the `harness.faults` entry points."""
    modules: list[tuple[str, object]] = [(f"--faults {spec}", import_plugin(spec)) for spec in specs]
    if not specs:
        modules = [(ref.origin, ref.load()) for ref in entry_points(FAULTS_GROUP)]
    if not modules:
        raise NoFaultPluginError(f"no fault plugin installed (entry-point group {FAULTS_GROUP}): {INSTALL_HINT}")
    plugins = []
    for origin, module in modules:
        checks, backends = getattr(module, "CHECKS", None), getattr(module, "BACKENDS", None)
        if not isinstance(checks, tuple) or not all(isinstance(c, Check) for c in checks) or not checks:
            raise PluginError(f"{origin}: a fault plugin module defines CHECKS, a non-empty tuple of selftest.Check")
        if not (isinstance(backends, str) or _strings(backends)):
            raise PluginError(
                f"{origin}: a fault plugin module defines BACKENDS, the module or file of its backends (or a tuple "
                "of them)"
            )
        plugins.append(FaultPlugin(origin, checks, backends))
    return plugins


def _strings(value: object) -> bool:
    return isinstance(value, tuple) and bool(value) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True)
class Outcome:
    check: Check
    cases: int
    good: int  # cases that behaved as expected
    metrics: tuple[str, ...]  # failing metrics seen (for faults)
    problem: str  # empty when the check holds
    skipped: str = ""  # why the check could not run here (its backend is unavailable: no GPU); it still holds

    @property
    def ok(self) -> bool:
        return not self.problem


def _metric_names(record: Record) -> set[str]:
    failures = record.verdict.failures if record.verdict else ()
    return {f.metric.split(".")[0] if f.metric.startswith("layerwise") else f.metric for f in failures}


def _culprit(record: Record) -> OpError | None:
    layerwise = record.parity.layerwise if record.parity else None
    return layerwise.culprit if layerwise else None


def _invalid_timings(record: Record) -> list[str]:
    """The invalid reasons of the record's timing and timing variants."""
    sections = [
        ("timing", record.timing),
        *((f"timing_variants.{n}", t) for n, t in (record.timing_variants or {}).items()),
    ]
    found = []
    for name, timing in sections:
        if timing is not None and not timing.valid:
            found.append(f"{name} invalid: {timing.invalid_reason}")
    return found


def _invariance(r: Record) -> Any:
    """The record's batch invariance verdict: True / False, None when not checked (no parts, or not asked)."""
    section = r.parity.section("invariance") if r.parity is not None else None
    return section.get("invariant") if section else None


def _judge_passes(check: Check, r: Record) -> str:
    """Why a record of an honest backend is not a pass ("" when it is)."""
    if r.status != "passed" or _culprit(r) is not None:
        return f"{r.case.key} {r.status}: {(r.reason or '')[:120]}"
    if check.require_invariance and _invariance(r) is not True:
        return f"{r.case.key}: batch invariance not checked (invariant = {_invariance(r)})"
    if check.is_timed and r.timing is None:
        return f"{r.case.key} was not timed"
    invalid = _invalid_timings(r)
    return f"{r.case.key} {invalid[0][:160]}" if invalid else ""


def _judge_timing_cheat(check: Check, r: Record) -> tuple[str, str]:
    """(problem, matched phrase) for a record of a timing cheat: caught only by an invalid timing whose reason
    (or one of its `problems`, where the timed path lists every check that failed) names one of the check's
    `reasons`, in a record marked failed."""
    if r.timing is None:
        return f"{r.case.key} {r.status}, not timed: {(r.reason or '')[:120]}", ""
    reason = r.timing.invalid_reason
    if r.timing.valid:
        return f"{r.case.key} {r.status} with a valid timing (median {r.timing.median_ns} ns)", ""
    named = " | ".join([reason, *r.timing.problems]).lower()  # every check's
    matched = next((p for p in check.reasons if p.lower() in named), "")
    if not matched:
        return f"{r.case.key}: timing invalid for another reason: {reason[:160]}", ""
    if r.status != "failed":
        return f"{r.case.key}: timing invalid but the case is {r.status}, not failed", matched
    return "", matched


def _judge_not_invariant(r: Record) -> str:
    """Why a record of a batch-variant backend is not what its check claims: parity passed (the difference is
    within the budgets) and batch invariance reported False ("" when so)."""
    if r.status != "passed":
        return f"{r.case.key} {r.status} (parity must pass): {(r.reason or '')[:120]}"
    found = _invariance(r)
    return "" if found is False else f"{r.case.key}: reported batch invariant = {found}"


def judge_check(check: Check, records: list[Record]) -> Outcome:
    if not records:
        return Outcome(check, 0, 0, (), "no cases ran")
    metrics: set[str] = set()
    good = 0
    problems = []
    for r in records:
        if check.expect == "passes":
            problem = _judge_passes(check, r)
        elif check.expect == "timing_invalid":
            problem, matched = _judge_timing_cheat(check, r)
            if matched:
                metrics.add(f"timing: {matched}")
        elif check.expect == "not_invariant":
            problem = _judge_not_invariant(r)
            metrics |= set() if problem else {"invariance"}
        elif r.status != "failed":
            problem = f"{r.case.key} {r.status}"
        elif check.reasons and not any(p.lower() in (r.reason or "").lower() for p in check.reasons):
            problem = f"{r.case.key} failed for another reason: {(r.reason or '')[:160]}"
        else:
            metrics |= _metric_names(r) | {
                f"reason: {p}" for p in check.reasons if p.lower() in (r.reason or "").lower()
            }
            c = _culprit(r)
            located = check.culprit is None or (c is not None and (c.layer, c.kind) == check.culprit)
            problem = "" if located else f"{r.case.key}: localized to {c and (c.layer, c.kind)}"
        if problem:
            problems.append(problem)
        else:
            good += 1
    problem = ""
    if problems:
        label = "falsely failed" if check.expect == "passes" else "slipped through"
        problem = f"{len(problems)} of {len(records)} {label}; first: {problems[0]}"
    return Outcome(check, len(records), good, tuple(sorted(metrics)), problem)


def _unavailable_device(registry: BackendRegistry, check: Check) -> str:
    """Why the check's backend cannot run here when it needs a device this machine lacks (a GPU); "" otherwise.
    A CPU backend that is unavailable is a broken selftest, not a skip."""
    cls = registry.get(check.backend)
    if cls.device == "cpu":
        return ""
    availability = registry.probe(check.backend)
    return "" if availability.available else f"{check.backend} unavailable here: {availability.reason}"


def _too_few_ranks(check: Check) -> str:
    """Why a distributed check cannot show in this process's world (too few ranks); "" when it can."""
    if check.min_world <= 1:
        return ""
    from harness.collective import world_size

    if world_size() >= check.min_world:
        return ""
    return f"needs {check.min_world}+ ranks: torchrun --nproc-per-node {check.min_world} -m harness selftest"


def join_ranks() -> Any:
    """Under torchrun (WORLD_SIZE > 1): join the ranks' gloo group so distributed checks run across them, and
    return this rank's RankInfo (every rank runs every check in the same order; only rank 0 reports). None in
    one process."""
    from harness.ranks import Coordinator, RankInfo

    info = RankInfo.from_env()
    if info is not None:
        Coordinator(info)  # env:// init; harness/collective.py makes each backend's groups over this world
    return info


def leave_ranks() -> None:
    """Under torchrun: wait for every rank, then destroy the process groups before the interpreter exits (a live
    gloo group torn down at exit aborted a rank now and then: 'terminate called without an active exception')."""
    from harness.ranks import current

    coordinator = current()
    if coordinator is not None:
        coordinator.barrier()
        coordinator.close()


class DiscardRecords:
    """The records of a rank other than 0 under torchrun: judged, not written (rank 0 writes the same cases)."""

    def write(self, record: Record) -> None:
        del record


def _options(check: Check) -> RunOptions:
    return RunOptions(
        parity_only=not check.is_timed,
        timing=SELFTEST_TIMING,
        determinism=False,
        layerwise=check.layerwise,
        time_oracles=check.time_oracles,
        invariance=check.expect == "not_invariant" or check.require_invariance,
        require_invariance=check.require_invariance,
        backend_options={check.backend: dict(check.backend_options)} if check.backend_options else {},
    )


def run_selftest(
    records_out: Any, on_check: Callable[[Outcome], None] | None = None, plugins: list[FaultPlugin] | None = None
) -> list[Outcome]:
    """Run every check of the fault plugins (default: the installed ones) through the ordinary runner, appending
    its records to `records_out` (a ResultWriter)."""
    from harness.results import new_run_id

    plugins = load_fault_plugins() if plugins is None else plugins
    registry = default_registry([spec for p in plugins for spec in p.backend_specs])
    workloads = WorkloadRegistry.discover()
    outcomes = []
    for check in (c for p in plugins for c in p.checks):
        missing = _unavailable_device(registry, check) or _too_few_ranks(check)
        if missing:
            outcome = Outcome(check, 0, 0, (), "", skipped=missing)
        else:
            suite = Suite(
                f"selftest:{check.backend}",
                workloads=check.workloads,
                presets=check.presets,
                dtypes=check.dtypes,
                shapes=check.shapes,
                backends=(check.backend,),
                inputs=check.inputs,
            )
            runner = Runner(registry, workloads, _options(check), new_run_id())
            records: list[Record] = []
            with _expected_warnings(check):
                runner.run(runner.plan(suite), records_out, lambda case, record, _r=records: _r.append(record))
            outcome = judge_check(check, records)
        outcomes.append(outcome)
        if on_check is not None:
            on_check(outcome)
    return outcomes


@contextlib.contextmanager
def _expected_warnings(check: Check) -> Iterator[None]:
    """A planted cheat's "timing invalid" warnings are the outcome its check expects, and the check's line says
    so: they are not logged (an honest backend's still are, where they would be news)."""
    timing_log = logging.getLogger("harness.case_timing")
    level = timing_log.level
    if check.expect == "timing_invalid":
        timing_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        timing_log.setLevel(level)


def default_output(run_dir: Path = Path("results") / "runs") -> Path:
    from harness.results import new_run_id

    return run_dir / f"selftest-{new_run_id()}.jsonl"
