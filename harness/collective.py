"""The process groups a distributed workload's op runs on (its `group` argument), chosen by the backend.

A backend names its torch.distributed backend in `Backend.collective_backend` ("gloo" on the CPU, "nccl" CUDA,
"hccl" Ascend; "" for none). Under torchrun the sweep's gloo coordination group already spans the world
(harness/ranks.py); each collective backend gets a group of its own over the whole world (never the
coordinator's, so a case's collectives and the sweep's bookkeeping never interleave), plus one of this rank
alone: the same op at world size 1 (layout invariance, harness/layout.py). Outside torchrun a default gloo
group of one is made in-process (a HashStore), so a distributed op runs its real collectives on a world of one.
Groups are made lazily, in the order the ranks meet collective cases, which is the same on every rank.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from harness.backend import Backend, UnsupportedCaseError

log = logging.getLogger(__name__)

# Seconds a case's collective waits for the other ranks before it fails (a rank that errored out of a case
# leaves the others waiting): the case becomes an error record instead of hanging the sweep.
TIMEOUT_ENV = "HARNESS_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0

_groups: dict[tuple[str, str], Any] = {}


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = DEFAULT_TIMEOUT_S
        log.warning("%s=%r is not a number of seconds; using %g", TIMEOUT_ENV, raw, seconds)
    return timedelta(seconds=seconds if seconds > 0 else DEFAULT_TIMEOUT_S)


def _dist() -> Any:
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - builds without distributed support
        raise UnsupportedCaseError("this torch build has no torch.distributed")
    if not dist.is_initialized():  # one process: a gloo world of one, in-process
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=_timeout())
    return dist


def world_size() -> int:
    """The number of ranks a collective case runs on: torchrun's world, else 1."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def group_for(backend: Backend, layout: str = "world") -> Any:
    """The process group of `backend`'s collectives: `layout` "world" (every rank) or "single" (this rank
    alone). A backend without collectives (`collective_backend` "") is a skip naming it."""
    name = backend.collective_backend
    if not name:
        raise UnsupportedCaseError("no collectives of its own (collective_backend is empty): dist.* cases need one")
    dist = _dist()
    key = (name, layout)
    if key not in _groups:
        if dist.get_world_size() == 1 and dist.get_backend() == name:
            _groups[key] = dist.group.WORLD  # one process: its own world is both layouts
        elif layout == "world":
            _groups[key] = dist.new_group(backend=name, timeout=_timeout())
        else:  # every rank takes part in making the singletons, and keeps its own
            _groups[key], _ = dist.new_subgroups(group_size=1, backend=name, timeout=_timeout())
    return _groups[key]


def rank_and_size(group: Any) -> tuple[int, int]:
    """This process's rank in `group` and the group's size."""
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)
