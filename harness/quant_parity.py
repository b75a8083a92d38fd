"""A quantized case's second error: its output against the unquantized float64 function (the format's own
error), beside the verdict against the format's emulation (the kernel's error). Recorded as the parity section's
`format_error`; its figures are judged against budgets only when the run sets them itself (`--budget`), but an
output closer to the unquantized function than to the emulation always fails (`not_quantized`): the emulation's
bfloat16 budget is wider than w8a8's own error, so without it a kernel that skips the format would pass."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness import parity
from harness.lazy import torch

CaseInputs = Evaluation = Any  # harness.workload's types (which imports this module)

FORMAT_ERROR = "format_error"  # the record's details key (parity.details.format_error) and the failure prefix
NOT_QUANTIZED = f"{FORMAT_ERROR}.not_quantized"  # the failure of an output nearer the unquantized function


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


def not_quantized(details: dict[str, Any], metrics: parity.Metrics) -> tuple[parity.Failure, ...]:
    """A failure when the output is strictly closer (rel_l2) to the unquantized function than to the format's
    emulation: a correct kernel's error is its output rounding, far below the format's own error, so only a
    kernel that did not compute the format lands nearer the unquantized function. Equal errors (inputs the
    format represents exactly, where both references agree) pass."""
    record = details.get(FORMAT_ERROR)
    if record is None:
        return ()
    to_plain, to_emulation = float(record["rel_l2"]), float(metrics.rel_l2)
    if not to_plain < to_emulation:
        return ()
    detail = (
        f"the output is closer to the unquantized function (rel_l2 {to_plain:.3g}) than to the format's emulation "
        f"({to_emulation:.3g}): the kernel did not compute the quantized format"
    )
    return (parity.Failure(NOT_QUANTIZED, to_plain, to_emulation, detail),)
