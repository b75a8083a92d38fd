"""The torchrun environment of a sharded `harness run`, and the few collectives its ranks coordinate with.

torchrun (`python -m torch.distributed.run`) starts one process per rank and tells each who it is through
RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK (the node) and MASTER_ADDR / MASTER_PORT. A run
sees no such variables, or a world of one, and is the single-process run it always was. The ranks coordinate
over gloo whatever the backends' devices: the messages are Python objects (a run id, exit codes, record
counts), never tensors of a case. torch.distributed is imported only here, and only when a sharded run starts,
so `harness --help` stays fast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from harness.names import BadInputError

# Seconds a rank waits in a collective for the others: the end-of-run exchange waits for the slowest rank's
# whole share, so the default is long; a hung case is --isolate / --case-timeout's business, not this one's.
TIMEOUT_ENV = "HARNESS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0
ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

_current: list[Coordinator] = []  # this process's coordinator while it is open (collective cases' agreement)


class RankEnvironmentError(BadInputError):
    """torchrun's variables are set but do not describe a rank (exit code 2)."""


@dataclass(frozen=True)
class RankInfo:
    """Who this process is in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node: int  # GROUP_RANK: the node's index (0 on a single node)

    @property
    def leader(self) -> bool:
        """Rank 0: merges the records and prints the summary."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Any = None) -> RankInfo | None:
        """This process's rank, or None outside torchrun (no WORLD_SIZE) or in a world of one: single-process."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return None
        defaults = {"LOCAL_RANK": env.get("RANK"), "LOCAL_WORLD_SIZE": env.get("WORLD_SIZE"), "GROUP_RANK": "0"}
        values: dict[str, int] = {}
        for name in (*ENV_NAMES, "GROUP_RANK"):
            raw = env.get(name, defaults.get(name))  # without the local ones: one node, local = global
            try:
                values[name] = int(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise RankEnvironmentError(
                    f"{name}={raw!r}: expected an integer (torchrun sets {', '.join(ENV_NAMES)}); "
                    "unset WORLD_SIZE to run in one process"
                ) from None
        info = cls(
            values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"], values["GROUP_RANK"]
        )
        if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
            raise RankEnvironmentError(
                f"RANK={info.rank}, WORLD_SIZE={info.world_size}, LOCAL_RANK={info.local_rank}: expected "
                "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0"
            )
        return None if info.world_size == 1 else info


def _this_rank() -> RankInfo | None:
    """This process's torchrun rank (None: one process, or torchrun's variables malformed, which every rank says)."""
    try:
        return RankInfo.from_env()
    except BadInputError:
        return None


def repeated_rank() -> bool:
    """Under torchrun, a rank other than its node's first: it reads the same flags and files as that rank, so its
    usage errors would print that rank's line again (two ranks, two identical lines). It exits with the same code,
    silently; torchrun names every rank's exit code."""
    info = _this_rank()
    return info is not None and info.local_rank != 0


def rank_prefix() -> str:
    """`[rank K] ` on a torchrun rank other than 0 (its errors carry it: README, Scale-out), else ''."""
    info = _this_rank()
    return f"[rank {info.rank}] " if info is not None and info.rank else ""


def local_rank() -> int | None:
    """LOCAL_RANK under torchrun (the device index a backend places itself on), else None."""
    info = RankInfo.from_env()
    return None if info is None else info.local_rank


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = DEFAULT_TIMEOUT_S if raw is None else float(raw)
    except ValueError:
        raise RankEnvironmentError(f"{TIMEOUT_ENV}={raw!r}: expected seconds, e.g. 3600") from None
    if not seconds > 0:
        raise RankEnvironmentError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def prefix_logs(info: RankInfo) -> None:
    """Every log line of a rank other than 0 starts with its rank, so interleaved stderr stays readable."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"[rank {info.rank}] %(levelname)s %(name)s: %(message)s"))


class Coordinator:
    """The ranks' gloo process group, for the sweep's bookkeeping (a run id, a barrier, the end-of-run exchange).

    Made from torchrun's environment (`init_method="env://"`), destroyed by `close`."""

    def __init__(self, info: RankInfo) -> None:
        import torch.distributed as dist

        self.info = info
        self._dist = dist
        self._owned = not dist.is_initialized()
        if self._owned:
            dist.init_process_group("gloo", timeout=_timeout())
        self.group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        _current[:] = [self]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        box = [value]
        self._dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def barrier(self) -> None:
        self._dist.barrier(group=self.group)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        out: list[Any] = [None] * self.info.world_size
        self._dist.all_gather_object(out, value, group=self.group)
        return out

    def close(self) -> None:
        if self in _current:
            _current.clear()
        if self._owned and self._dist.is_initialized():
            self._dist.destroy_process_group()


def current() -> Coordinator | None:
    """The open coordinator of this process (a torchrun rank of a run or a selftest), else None: the ranks'
    agreement on a collective case's output (harness/rank_agreement.py) runs over its group."""
    return _current[0] if _current else None
