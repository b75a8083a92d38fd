"""The runner: a suite's cases run one after another, each record streamed as it ends, a summary kept.

It reads top-down: `Planner` (harness/planning.py) turns the suite into cases; an executor runs each case
(`CaseExecutor` in this process, harness/executor.py, or `IsolatedExecutor`, a child process per case,
harness/isolate.py); this loop groups cases that share inputs (everything but the backend), so a group's inputs
are made once and its float64 reference computed once, and adding a backend costs only that backend's own work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from harness.backend import BackendRegistry
from harness.executor import CaseExecutor, Executor
from harness.isolate import IsolatedExecutor
from harness.lazy import torch
from harness.planning import USER_INPUTS, Planner, UsageError
from harness.results import Record
from harness.run_options import RunOptions
from harness.suites import Suite
from harness.workload import Case, WorkloadRegistry

__all__ = ["USER_INPUTS", "RunOptions", "RunSummary", "Runner", "UsageError"]  # the runner's public names


@dataclass
class RunSummary:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    @property
    def exit_code(self) -> int:
        """DESIGN.md: 0 all passed, 1 a parity failure, 3 cases errored or crashed."""
        if any(self.counts.get(s) for s in ("error", "crashed", "timeout")):
            return 3
        if self.counts.get("failed"):
            return 1
        return 0


class Runner:
    """Plans a suite and runs its cases through an executor, streaming records to a writer."""

    def __init__(
        self,
        backends: BackendRegistry,
        workloads: WorkloadRegistry,
        options: RunOptions,
        run_id: str,
        user_inputs: Mapping[str, torch.Tensor] | None = None,
        isolation: tuple[Path, float] | None = None,
    ) -> None:
        self.options = options
        self.run_id = run_id
        self.planner = Planner(
            backends, workloads, model_path=options.model_path, user_inputs=user_inputs, layerwise=options.layerwise
        )
        self.in_process = CaseExecutor(backends, self.planner, options, run_id)
        # isolation: (spec file, per-case timeout): each case in a child process
        self.executor: Executor = (
            self.in_process if isolation is None else IsolatedExecutor(self.in_process, *isolation)
        )

    def plan(self, suite: Suite) -> list[Case]:
        """Cases in input-group order (the backend varies fastest). Raises UsageError on a bad selection."""
        return self.planner.plan(suite)

    @property
    def excluded(self) -> int:
        """Cases the suite's exclude globs left out of the last plan."""
        return self.planner.excluded

    def unavailable(self) -> dict[str, str]:
        """The backends probed so far that cannot run here, with the reason."""
        return self.executor.unavailable()

    def _apply_threads(self) -> None:
        """torch's intra-op pool (the references, torch backends, input generation) at the run's thread count."""
        if self.options.threads is not None and torch.get_num_threads() != self.options.threads:
            torch.set_num_threads(self.options.threads)

    def run(
        self,
        cases: Iterable[Case],
        writer: Any,
        on_record: Callable[[Case, Record], None] | None = None,
        on_start: Callable[[Case], None] | None = None,
    ) -> RunSummary:
        """Run every case, writing each record (`writer.write`) as it ends; a Ctrl-C propagates after the
        records written so far."""
        summary = RunSummary()
        self._apply_threads()
        for _, group_iter in groupby(cases, key=lambda c: c.input_key):
            group_cases = list(group_iter)
            if on_start is not None:
                on_start(group_cases[0])  # generating inputs (and loading a model) counts toward the first case
            early = {c.key: self.executor.unrunnable(c) for c in group_cases}
            prepared = None if all(early.values()) else self.executor.prepare(group_cases[0])
            for case in group_cases:
                if on_start is not None:
                    on_start(case)
                record = self.executor.execute(case, early.get(case.key) or prepared)
                writer.write(record)
                summary.add(record.status)
                if on_record is not None:
                    on_record(case, record)
        return summary

    def run_one(self, case: Case) -> Record:
        """One case on its own, in this process."""
        self._apply_threads()
        return self.in_process.run_one(case)
