"""`harness selftest`: proof that the parity checks catch real mistakes and do not fail correct code.

The faults live outside the product, in a fault plugin (this repository's `faults/`, distribution
infer-parity-harness-faults, registered under the entry-point group `harness.faults`): a module that defines
`CHECKS` (a tuple of `Check`) and `BACKENDS` (the module or .py file of their backend classes). This is the engine:
every planted fault runs through the ordinary runner on the cases where it must show, and every correct-but-
different implementation on the cases it must pass. A fault is caught only if EVERY one of its cases fails (and,
where a check names a culprit, the layer-wise localization names that layer and op).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backend import default_registry
from harness.names import BadInputError
from harness.plugins import PluginError, entry_points, import_plugin
from harness.results import Record
from harness.runner import Runner, RunOptions
from harness.suites import Suite
from harness.workload import WorkloadRegistry

if TYPE_CHECKING:
    from harness.parity_llm import OpError

log = logging.getLogger(__name__)

FAULTS_GROUP = "harness.faults"
INSTALL_HINT = "pip install --no-deps -e faults/ (make setup does), or name one with --faults MODULE_OR_FILE"


@dataclass(frozen=True)
class Check:
    description: str
    backend: str
    expect: str  # "caught" | "passes"
    workloads: tuple[str, ...]
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    shapes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("normal", "stress")
    layerwise: bool = False  # run with layer-wise localization (workloads with layers: the LLMs)
    culprit: tuple[int, str] | None = None  # the (layer, op kind) the localization must name (needs layerwise)


@dataclass(frozen=True)
class FaultPlugin:
    """One fault plugin: its checks and the module or file defining their backends."""

    origin: str
    checks: tuple[Check, ...]
    backends: str


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
        if not isinstance(backends, str):
            raise PluginError(f"{origin}: a fault plugin module defines BACKENDS, the module or file of its backends")
        plugins.append(FaultPlugin(origin, checks, backends))
    return plugins


@dataclass(frozen=True)
class Outcome:
    check: Check
    cases: int
    good: int  # cases that behaved as expected
    metrics: tuple[str, ...]  # failing metrics seen (for faults)
    problem: str  # empty when the check holds

    @property
    def ok(self) -> bool:
        return not self.problem


def _metric_names(record: Record) -> set[str]:
    failures = record.verdict.failures if record.verdict else ()
    return {f.metric.split(".")[0] if f.metric.startswith("layerwise") else f.metric for f in failures}


def _culprit(record: Record) -> OpError | None:
    layerwise = record.parity.layerwise if record.parity else None
    return layerwise.culprit if layerwise else None


def judge_check(check: Check, records: list[Record]) -> Outcome:
    if not records:
        return Outcome(check, 0, 0, (), "no cases ran")
    metrics: set[str] = set()
    good = 0
    problems = []
    for r in records:
        if check.expect == "passes":
            if r.status == "passed" and _culprit(r) is None:
                good += 1
            else:
                problems.append(f"{r.case.key} {r.status}: {(r.reason or '')[:120]}")
            continue
        if r.status != "failed":
            problems.append(f"{r.case.key} {r.status}")
            continue
        metrics |= _metric_names(r)
        if check.culprit is not None:
            c = _culprit(r)
            if c is None or (c.layer, c.kind) != check.culprit:
                problems.append(f"{r.case.key}: localized to {c and (c.layer, c.kind)}")
                continue
        good += 1
    problem = ""
    if problems:
        label = "falsely failed" if check.expect == "passes" else "slipped through"
        problem = f"{len(problems)} of {len(records)} {label}; first: {problems[0]}"
    return Outcome(check, len(records), good, tuple(sorted(metrics)), problem)


def run_selftest(
    records_out: Any, on_check: Callable[[Outcome], None] | None = None, plugins: list[FaultPlugin] | None = None
) -> list[Outcome]:
    """Run every check of the fault plugins (default: the installed ones) through the ordinary runner, appending
    its records to `records_out` (a ResultWriter)."""
    from harness.results import new_run_id

    plugins = load_fault_plugins() if plugins is None else plugins
    registry = default_registry([p.backends for p in plugins])
    workloads = WorkloadRegistry.discover()
    outcomes = []
    for check in (c for p in plugins for c in p.checks):
        suite = Suite(
            f"selftest:{check.backend}",
            workloads=check.workloads,
            dtypes=check.dtypes,
            shapes=check.shapes,
            backends=(check.backend,),
            inputs=check.inputs,
        )
        options = RunOptions(parity_only=True, determinism=False, layerwise=check.layerwise)
        runner = Runner(registry, workloads, options, new_run_id())
        records: list[Record] = []
        runner.run(runner.plan(suite), records_out, lambda case, record, _r=records: _r.append(record))
        outcome = judge_check(check, records)
        outcomes.append(outcome)
        if on_check is not None:
            on_check(outcome)
    return outcomes


def default_output(run_dir: Path = Path("results") / "runs") -> Path:
    from harness.results import new_run_id

    return run_dir / f"selftest-{new_run_id()}.jsonl"
