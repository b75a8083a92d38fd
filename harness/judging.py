"""Judging one case: the backend's output against the float64 reference (or an --against baseline), turned
into the record's parity section. Timing is a separate step (harness/case_timing.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from harness import parity, quant_parity
from harness.backend import Backend
from harness.results import Baseline, ParityRecord, VerdictRecord
from harness.run_options import RunOptions, Skip
from harness.saved import NOT_SAVED, SavedOutputs, SavedOutputsError
from harness.workload import Call, Case, CaseInputs

BackendFor = Callable[[str], "Backend | Skip"]  # a backend of this run by name, created once
CallFor = Callable[[Backend, CaseInputs], Call]  # the op on the group's inputs, moved to that backend once


@dataclass(frozen=True)
class Judgement:
    """A judged case: its parity section and the named output tensors (kept for --save-outputs)."""

    parity: ParityRecord
    outputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.parity.verdict.passed


@dataclass(frozen=True)
class Against:
    """An --against baseline judged like the candidate: its record (primary metrics, where they came from)
    and its own checks, which the candidate's same checks are re-judged against."""

    record: Baseline
    checks: tuple[parity.Check, ...] = ()


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
        failures, checks, details = evaluation.failures, evaluation.checks, dict(evaluation.details)
        if baseline is None:
            primary = (
                parity.judge(evaluation.metrics, budget, evaluation.prefix)
                if evaluation.judge_primary
                else parity.Verdict(True)
            )
        else:
            name, ratio = baseline.record.backend, self.options.against_ratio
            if evaluation.judge_primary:
                primary = parity.judge_against(
                    evaluation.metrics, baseline.record.metrics, budget, name, ratio=ratio, prefix=evaluation.prefix
                )
            else:  # judged by its own checks, re-judged below, as in absolute mode
                primary = parity.Verdict(True, mode=f"against {name}")
                baseline = Against(replace(baseline.record, ratio_judged=False), baseline.checks)
            failures, checks = parity.checks_against(failures, checks, baseline.checks, name, ratio)
            if baseline.checks:
                details["baseline_checks"] = {c.metric: c.value for c in baseline.checks}
        failures += self.format_failures(details, budget)
        failures += quant_parity.not_quantized(details, evaluation.metrics)  # a kernel that skipped the format
        verdict = parity.merge(primary.mode, primary, extra=failures, checks=checks)
        section = ParityRecord(
            verdict_record(verdict),
            evaluation.metrics,
            budget,
            workload.reduction_length(shape),
            baseline=None if baseline is None else baseline.record,
            details=details,
        )
        return Judgement(section, evaluation.outputs)

    def format_failures(self, details: dict[str, Any], budget: parity.Budget) -> tuple[parity.Failure, ...]:
        """A quantized case's format error counts only against budgets set by hand, and only on the fields set:
        `--budget format_error.FIELD=` where given, else the run's plain `--budget` fields (a limit not set
        stays open: loosening rel_l2 must not judge the format on a default frac_outside it was never held to)."""
        fields = self.options.format_budget_overrides or self.options.budget_overrides
        if not fields:
            return ()
        unset = {"rel_l2": math.inf, "worst_row_rel_l2": math.inf, "max_outside": math.inf}
        return quant_parity.format_failures(details, replace(budget, **{**unset, **fields}))

    def baseline(self, case: Case, group: CaseInputs) -> Against | Skip | None:
        """The --against baseline for this group (found once), a Skip, or None (no --against)."""
        if self.options.against is None:
            return None
        if "baseline" not in group.memo:
            group.memo["baseline"] = self._find_baseline(case, group)
        found: Against | Skip = group.memo["baseline"]
        return found

    def _find_baseline(self, case: Case, group: CaseInputs) -> Against | Skip:
        """The baseline's outputs judged by the candidate's own metrics: read back from a --save-outputs
        directory, or collected from a backend of this run."""
        workload = group.workload
        budget = workload.budget(case.dtype, group.shape, self.options.budget_overrides)
        if self.saved_in is not None:
            return self._saved_baseline(case, group, budget)
        name = str(self.options.against)
        backend = self.backend_for(name)
        if isinstance(backend, Skip):
            return Skip(f"baseline {backend.reason}")
        support = backend.supports(case)
        if not support:
            return Skip(f"baseline {name}: {support.reason}")
        evaluation = workload.judge_outputs(workload.collect(self.call_for(backend, group), group), group, budget)
        if evaluation.metrics is None:
            return Skip(f"baseline {name} gave a malformed output: {evaluation.failures[0].describe()}")
        return Against(Baseline(name, "this run", evaluation.metrics), evaluation.checks)

    def _saved_baseline(self, case: Case, group: CaseInputs, budget: parity.Budget) -> Against | Skip:
        """A saved source run's outputs, judged against this side's reference (which must be the source's)."""
        assert self.saved_in is not None
        saved, workload = self.saved_in, group.workload
        name = saved.baseline_backend()
        path = saved.output_path(case, name)
        try:
            saved.check_reference(case, group.reference())
            outputs = saved.load_outputs(case, name, workload.saved_outputs)
        except SavedOutputsError as exc:
            return Skip(str(exc), broken=True)
        if outputs is None:
            return Skip(f"{NOT_SAVED}: {saved.root} has no output of {name} for {case.input_key}")
        try:
            evaluation = workload.judge_outputs(outputs, group, budget)
        except (ValueError, TypeError, IndexError, RuntimeError) as exc:  # tensors that do not fit: the file's fault
            return Skip(f"{path}: {type(exc).__name__}: {exc}", broken=True)
        if evaluation.metrics is None:  # a saved output of another shape or dtype
            return Skip(f"{path}: {evaluation.failures[0].describe()}", broken=True)
        return Against(Baseline(name, str(saved.root), evaluation.metrics), evaluation.checks)
