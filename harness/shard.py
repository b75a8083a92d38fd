"""Which planned cases each rank of a torchrun job runs.

The unit is the input group (cases that differ only in backend: one set of inputs, one float64 reference), so
sharding never makes two ranks generate the same inputs. Groups go to ranks by estimated cost, largest first, each
to the least loaded rank (ties: the lower rank): a pure function of the plan and the world size, computed over the
whole plan before a `--resume` takes the recorded cases out, so a rank's share is the same on every try. A group
whose workload is `collective` (it runs across every rank together) goes to every rank; only rank 0 records it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

from harness.workload import Case

if TYPE_CHECKING:
    from harness.planning import Planner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Share:
    """One rank's cases, in plan order, and the keys of those it runs but does not record (collective cases
    on ranks other than 0: rank 0 writes their one record)."""

    cases: tuple[Case, ...]
    unrecorded: frozenset[str] = frozenset()


def groups(cases: Sequence[Case]) -> list[list[Case]]:
    """The plan's input groups, in plan order (the planner keeps a group's cases together)."""
    return [list(g) for _, g in groupby(cases, key=lambda c: c.input_key)]


def shard(
    cases: Sequence[Case],
    world_size: int,
    cost: Callable[[list[Case]], float],
    collective: Callable[[Case], bool] = lambda case: False,
) -> list[Share]:
    """Every rank's share of `cases` (index = rank). `cost(group)` estimates a group's work (any positive
    scale: FLOPs, elements); `collective(case)` says a case runs on every rank together."""
    shared: set[int] = set()
    owner: dict[int, int] = {}
    planned = groups(cases)
    loads = [0.0] * world_size
    costs = {}
    for index, group in enumerate(planned):
        if collective(group[0]):
            shared.add(index)
        else:
            costs[index] = max(float(cost(group)), 0.0)
    for index in sorted(costs, key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owner[index] = rank
        loads[rank] += costs[index]
    shares = []
    for rank in range(world_size):
        mine = [c for i, g in enumerate(planned) if i in shared or owner.get(i) == rank for c in g]
        quiet = frozenset(c.key for i in shared for c in planned[i]) if rank else frozenset()
        shares.append(Share(tuple(mine), quiet))
    return shares


def flops_cost(planner: Planner) -> Callable[[list[Case]], float]:
    """A group's cost: its workload's FLOPs at the case's shape (the planner's: a preset's, a checkpoint's or
    the user's tensors') times its number of cases; 1 per case where the shape cannot be had cheaply."""

    def cost(group: list[Case]) -> float:
        case = group[0]
        try:
            workload = planner.workloads.get(case.workload)
            if planner.user_inputs is not None:
                shape = planner.user_shape(workload, case.preset)
            else:
                shape = planner.generated_shape(workload, case)
            flops = float(workload.flops(shape))
        except Exception:  # an estimate only: a shape that needs more than the plan knows costs 1
            log.debug("no cost estimate for %s", case.input_key, exc_info=True)
            flops = 1.0
        return max(flops, 1.0) * len(group)

    return cost
