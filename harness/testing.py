"""Parity assertions for users' own tests, with the harness's metrics and budgets.

    from harness.testing import assert_parity
    assert_parity(out, reference, dtype="bfloat16", reduction_length=q.shape[-1])  # or dtype=torch.bfloat16

A failure names the metric, its value, the budget and the worst element's index, so a CI log says what broke.
"""

from __future__ import annotations

import torch

from harness import parity
from harness.dtypes import DtypeError, dtype_name

__all__ = ["DtypeError", "ParityError", "assert_parity"]


class ParityError(AssertionError):
    """An output outside its parity budget; `.metrics` and `.verdict` carry the details."""

    def __init__(self, message: str, metrics: parity.Metrics, verdict: parity.Verdict) -> None:
        super().__init__(message)
        self.metrics = metrics
        self.verdict = verdict


def assert_parity(
    out: torch.Tensor,
    ref: torch.Tensor,
    *,
    dtype: str | torch.dtype | None = None,
    reduction_length: int = 1,
    budget: parity.Budget | None = None,
    **overrides: float,
) -> parity.Metrics:
    """Assert `out` matches the float64 reference `ref` within the dtype's budget; returns the metrics.

    dtype (a name such as "bfloat16", or torch.bfloat16) defaults to out's dtype; one without a budget raises
    DtypeError (a ValueError) naming the accepted ones; `overrides` replace budget fields (rel_l2=...).
    """
    name = dtype_name(out.dtype if dtype is None else dtype)
    if budget is None:
        budget = parity.budget_for(name, reduction_length, overrides or None)
    if tuple(out.shape) != tuple(ref.shape):
        raise AssertionError(f"output shape {list(out.shape)} != reference shape {list(ref.shape)}")
    metrics = parity.compare(out, ref, budget)
    verdict = parity.judge(metrics, budget)
    if not verdict.passed:
        index = tuple(metrics.worst_index)
        worst = out.detach().reshape(out.shape)[index].item() if index else out.item()
        expected = ref.detach()[index].item() if index else ref.item()
        raise ParityError(
            f"parity failed ({name}): {verdict.reason}; worst element at index {list(index)}: "
            f"got {worst:.6g}, expected {expected:.6g} (worst row {metrics.worst_row})",
            metrics,
            verdict,
        )
    return metrics
