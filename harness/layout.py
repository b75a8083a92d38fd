"""Layout invariance of a distributed case: the same backend's output at world size N (the run's) against its
output at world size 1 (this rank alone), and each one's error against the float64 reference.

Users meet this as "TP=1 and TP=2 logits differ": a correct distributed op may differ from its one-rank run in
the last bits (a different summation order), but its error against the reference must not grow with N. The
verdict fails when the world-N error exceeds `RATIO` times the world-1 error plus `SLACK` of the case's rel_l2
budget (the slack keeps a bitwise-exact world-1 run from making any rounding difference a failure). Recorded as
the `parity.layout` section of every distributed case's record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import parity
from harness.lazy import torch
from harness.workload import CaseInputs

RATIO = 2.0
SLACK = 0.25


def check(
    group: CaseInputs, world_out: Any, single_call: Callable[..., Any], world: int, budget: parity.Budget
) -> dict[str, Any]:
    """The `layout` section: `world_out` is the judged primary output at world size `world`, `single_call` the
    op on a group of this rank alone (called as the workload's `collect` calls it; not at world size 1)."""
    ref = group.reference()
    err_world = _rel_l2(world_out, ref, budget)
    if world == 1:  # the world is the single rank: nothing to compare, no verdict (a report shows "not checked")
        return {"world_size": world, "checked": False, "rel_l2_world": err_world}
    single_out = group.workload.collect(single_call, group).get("out")
    err_single = _rel_l2(single_out, ref, budget)
    section: dict[str, Any] = {
        "world_size": world,
        "checked": True,
        "rel_l2_world": err_world,
        "rel_l2_single": err_single,
    }
    if not (isinstance(world_out, torch.Tensor) and isinstance(single_out, torch.Tensor)):
        return {**section, "bitwise_equal": False, "max_abs_diff": None, "within_budget": False}
    same_shape = world_out.shape == single_out.shape
    equal = same_shape and bool(torch.equal(world_out, single_out))
    diff = float((world_out.double() - single_out.double()).abs().max()) if same_shape and world_out.numel() else None
    limit = RATIO * err_single + SLACK * budget.rel_l2
    return {
        **section,
        "bitwise_equal": equal,
        "max_abs_diff": diff,
        "rel_l2_limit": limit,
        "within_budget": equal or err_world <= limit,
    }


def _rel_l2(out: Any, ref: torch.Tensor, budget: parity.Budget) -> float:
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return float("inf")
    return parity.compare(out, ref, budget).rel_l2


def failure_reason(section: dict[str, Any]) -> str:
    """The record's reason when the layout verdict fails: names the layout and the figures."""
    return (
        f"layout: world size {section['world_size']} vs 1: rel_l2 {section['rel_l2_world']:.3g} vs "
        f"{section['rel_l2_single']:.3g} (limit {section.get('rel_l2_limit', float('nan')):.3g}): the error grows "
        "with the number of ranks"
    )
