"""The options of a run, shared by the planner, the case executors (in-process and --isolate) and the judge,
and `Skip`: what a step of a case returns instead of a result when the case cannot run here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness import parity
from harness.timing import TimingConfig


@dataclass(frozen=True)
class RunOptions:
    parity_only: bool = False
    timing: TimingConfig = field(default_factory=TimingConfig)
    determinism: bool = True  # run each op twice more and record whether the outputs are bitwise equal
    threads: int | None = None  # intra-op threads for torch and every backend's pools; None leaves them as they are
    time_oracles: bool = False  # also time reference backends (cpu-reference): the cost of the naive math
    save_outputs: Path | None = None
    against: str | None = None  # a backend name, or a directory written by --save-outputs
    against_ratio: float = parity.DEFAULT_RATIO  # --against: allowed multiple of the baseline's error
    budget_overrides: Mapping[str, float] | None = None
    # --budget format_error.FIELD=...: a quantized case's format error judged against these alone (on the case's
    # budget with budget_overrides); without them, budget_overrides judge it too
    format_budget_overrides: Mapping[str, float] | None = None
    layerwise: bool = False  # workloads that can: per-layer localization (propagated and teacher-forced)
    model_path: str | None = None  # --model: a user's checkpoint directory instead of seeded weights
    invariance: bool = False  # also run each part of a case alone (Workload.invariance_parts) and compare
    require_invariance: bool = False  # a part whose output differs from the whole's fails the case
    # --backend-option: backend name -> option -> raw value, given to that backend's constructor and recorded
    backend_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    local_rank: int | None = None  # under torchrun: the device index each backend places itself on (Backend.place)

    def options_for(self, backend: str) -> dict[str, str]:
        """The options the named backend is created with ({} when none)."""
        return dict(self.backend_options.get(backend) or {})


@dataclass(frozen=True)
class RayConfig:
    """--executor ray: the cluster to join (None: RAY_ADDRESS, a `ray start` cluster here, or a new local one)
    and how many times a dead task's unfinished cases are resubmitted before the case in flight is `crashed`."""

    address: str | None = None
    retries: int = 0


@dataclass(frozen=True)
class Skip:
    """A case (or a group's inputs, or a baseline) that cannot run here, and why: becomes a `skipped` record,
    or an `error` one when what stops it is broken (a corrupt saved file), which the run's exit code must show."""

    reason: str
    broken: bool = False

    @property
    def status(self) -> str:
        return "error" if self.broken else "skipped"
