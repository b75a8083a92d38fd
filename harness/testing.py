"""Parity assertions for users' own tests, with the harness's metrics and budgets.

    from harness.testing import assert_parity
    assert_parity(out, reference, dtype="bfloat16", reduction_length=q.shape[-1])

A failure names the metric, its value, the budget and the worst element's index, so a CI log says what broke.
"""

from __future__ import annotations

import torch

from harness import parity

__all__ = ["ParityError", "assert_parity"]


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
    dtype: str | None = None,
    reduction_length: int = 1,
    budget: parity.Budget | None = None,
    **overrides: float,
) -> parity.Metrics:
    """Assert `out` matches the float64 reference `ref` within the dtype's budget; returns the metrics.

    dtype defaults to out's dtype; `overrides` replace budget fields (rel_l2=..., worst_row_rel_l2=...).
    """
    name = dtype or str(out.dtype).removeprefix("torch.")
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
