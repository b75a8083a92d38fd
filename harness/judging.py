"""Judging one case: the backend's output against the float64 reference (or an --against baseline), turned
into the record's parity section. Timing is a separate step (harness/case_timing.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import parity
from harness.backend import Backend
from harness.results import Baseline, ParityRecord, VerdictRecord
from harness.run_options import RunOptions, Skip
from harness.saved import SavedOutputs, SavedOutputsError
from harness.workload import Call, Case, CaseInputs

BackendFor = Callable[[str], "Backend | Skip"]  # a backend of this run by name, created once
CallFor = Callable[[Backend, CaseInputs], Call]  # the op on the group's inputs, moved to that backend once


@dataclass(frozen=True)
class Judgement:
    """A judged case: its parity section and the primary output (kept for --save-outputs)."""

    parity: ParityRecord
    output: Any = None

    @property
    def passed(self) -> bool:
        return self.parity.verdict.passed


def verdict_record(verdict: parity.Verdict) -> VerdictRecord:
    return VerdictRecord(verdict.passed, verdict.mode, verdict.reason, verdict.failures, verdict.worst)


class Judge:
    """Judges cases at the run's options; finds each group's --against baseline once."""

    def __init__(self, options: RunOptions, saved_in: SavedOutputs | None, backend_for: BackendFor, call_for: CallFor):
        self.options = options
        self.saved_in = saved_in  # --against a --save-outputs directory
        self.backend_for = backend_for
        self.call_for = call_for

    def judge(self, case: Case, group: CaseInputs, call: Call) -> Judgement | Skip:
        """Call the backend through `call`, judge its output; a Skip when the baseline cannot be had."""
        workload, shape = group.workload, group.shape
        budget = workload.budget(case.dtype, shape, self.options.budget_overrides)
        evaluation = workload.evaluate(call, group, budget)
        if evaluation.metrics is None:
            verdict = parity.merge("reference", extra=evaluation.failures)
            return Judgement(ParityRecord(verdict_record(verdict)))
        baseline = self.baseline(case, group)
        if isinstance(baseline, Skip):
            return baseline
        if baseline is None:
            primary = (
                parity.judge(evaluation.metrics, budget, evaluation.prefix)
                if evaluation.judge_primary
                else parity.Verdict(True)
            )
        else:
            primary = parity.judge_against(
                evaluation.metrics,
                baseline.metrics,
                budget,
                baseline.backend,
                ratio=self.options.against_ratio,
                prefix=evaluation.prefix,
            )
        verdict = parity.merge(primary.mode, primary, extra=evaluation.failures, checks=evaluation.checks)
        section = ParityRecord(
            verdict_record(verdict),
            evaluation.metrics,
            budget,
            workload.reduction_length(shape),
            baseline=baseline,
            details=dict(evaluation.details),
        )
        return Judgement(section, evaluation.output)

    def baseline(self, case: Case, group: CaseInputs) -> Baseline | Skip | None:
        """The --against baseline's primary metrics for this group (found once), a Skip, or None (no --against)."""
        if self.options.against is None:
            return None
        if "baseline" not in group.memo:
            group.memo["baseline"] = self._find_baseline(case, group)
        found: Baseline | Skip = group.memo["baseline"]
        return found

    def _find_baseline(self, case: Case, group: CaseInputs) -> Baseline | Skip:
        budget = group.workload.budget(case.dtype, group.shape, self.options.budget_overrides)
        if self.saved_in is not None:
            name = self.saved_in.baseline_backend()
            try:
                out = self.saved_in.load_output(case, name)
            except SavedOutputsError as exc:
                return Skip(str(exc), broken=True)
            if out is None:
                return Skip(f"{self.saved_in.root} has no output of {name} for {case.input_key}")
            try:
                metrics = parity.compare(out, group.reference(), budget)
            except ValueError as exc:  # a saved output of another shape: that file is wrong, not the backend
                return Skip(f"{self.saved_in.output_path(case, name)}: {exc}", broken=True)
            return Baseline(name, str(self.saved_in.root), metrics)
        name = str(self.options.against)
        backend = self.backend_for(name)
        if isinstance(backend, Skip):
            return Skip(f"baseline {backend.reason}")
        support = backend.supports(case)
        if not support:
            return Skip(f"baseline {name}: {support.reason}")
        evaluation = group.workload.evaluate(self.call_for(backend, group), group, budget)
        if evaluation.metrics is None:
            return Skip(f"baseline {name} gave a malformed output: {evaluation.failures[0].describe()}")
        return Baseline(name, "this run", evaluation.metrics)
