"""A quantized case's second error: its output against the unquantized float64 function (the format's own
error), beside the verdict against the format's emulation (the kernel's error). Informative: recorded as the
parity section's `format_error` and judged only when the run sets budgets itself (`--budget`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness import parity
from harness.lazy import torch

CaseInputs = Evaluation = Any  # harness.workload's types (which imports this module)

FORMAT_ERROR = "format_error"  # the record's details key (parity.details.format_error) and the failure prefix


def unquantized_reference(group: CaseInputs) -> torch.Tensor:
    """The float64 reference of the group's primary output with the format taken out of its shape."""

    def compute() -> torch.Tensor:
        shape = dataclasses.replace(group.shape, quant=None)
        return group.workload.reference_output(group.tensors, shape, group.context)

    result: torch.Tensor = group.cached("unquantized_reference", compute)
    return result


def with_format_error(evaluation: Evaluation, group: CaseInputs) -> Evaluation:
    """The evaluation with details[format_error]: its primary output's metrics against the unquantized function."""
    out = evaluation.output
    if out is None or evaluation.metrics is None:
        return evaluation
    ref = unquantized_reference(group)
    metrics = parity.compare(out, ref, parity.budget_for("bfloat16", 1))  # frac_outside at bfloat16's atol/rtol
    details = {**evaluation.details, FORMAT_ERROR: metrics.to_record()}
    return dataclasses.replace(evaluation, details=details)


def format_failures(details: dict[str, Any], budget: parity.Budget) -> tuple[parity.Failure, ...]:
    """The format error judged against the run's own budget (only called with --budget)."""
    record = details.get(FORMAT_ERROR)
    if record is None:
        return ()
    return parity.judge(parity.Metrics(**record), budget, prefix=f"{FORMAT_ERROR}.").failures
