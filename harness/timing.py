"""Timing: warm-up, adaptive repetitions to a time budget, many calls per sample for short ops, statistics.

Raw per-call samples are kept in every result and the statistics are computed from them, so a report or a
run-to-run comparison can recompute anything. A device backend supplies its own `Timer` (device events); the
CPU timer is `time.perf_counter_ns` between two synchronizations.

Each sample also records the process's CPU time. Where the work runs on this process's own CPU threads, wall
time well above CPU time means the process was waiting for a core (another job on a shared machine): uniform
contention that leaves the samples tight (a small IQR) and every figure too slow. Such timings are flagged noisy
as well as those with a wide IQR.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

NOISE_THRESHOLD = 0.10  # IQR / median above this earns a noise warning
CONTENTION_RATIO = 1.2  # wall time above this multiple of the process's CPU time: it waited for a core
BOOTSTRAP_RESAMPLES = 1000


class Timer(Protocol):
    """Measures `calls` back-to-back calls of `fn`; returns the total in nanoseconds.

    `method` names how (it may change once a timer falls back, e.g. from graph replay to events). A timer may
    also carry `max_calls_per_sample` (a cold-cache timer flushes before every call, so 1) and `notes` (a dict
    recorded with the timing: why a graph capture failed, how many input sets rotated), and `host_cpu` (True
    where the timed work runs on this process's CPU threads, so wall vs CPU time can reveal contention).
    """

    method: str

    def elapsed_ns(self, fn: Callable[[], object], calls: int) -> float: ...


@dataclass
class WallClockTimer:
    """perf_counter_ns between two synchronizations: the CPU timer, and the fallback for any device."""

    synchronize: Callable[[], None]
    method: str = "perf_counter_ns"
    host_cpu: bool = False  # True when the op itself runs on the host CPU (not merely waits for a device)

    def elapsed_ns(self, fn: Callable[[], object], calls: int) -> float:
        self.synchronize()
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        self.synchronize()
        return float(time.perf_counter_ns() - start)


@dataclass(frozen=True)
class TimingConfig:
    """How long and how finely to time one case."""

    budget_s: float = 0.5  # steady-state measurement time per case
    warmup_s: float = 0.05
    min_samples: int = 5
    max_samples: int = 500
    min_sample_s: float = 1e-3  # ops shorter than this are called many times per sample
    # Devices with a cache that holds a case's inputs (Backend.timing_input_sets): rotate among copies of the
    # inputs, so repeated calls do not all hit a warm cache. How a device times (graphs, cache flushes) is the
    # backend's own option (`--backend-option`).
    rotate_inputs: bool = True
    # The checks of harness/timing_checks.py (outputs under timing, inputs untouched, physical limits). Off only
    # for benchmarks/timing_checks.py, which shows they leave the timed figure unchanged.
    checks: bool = True


@dataclass(frozen=True)
class Stats:
    """Statistics of per-call latency in nanoseconds, computed from raw samples."""

    n: int
    median_ns: float
    mean_ns: float
    min_ns: float
    q1_ns: float
    q3_ns: float
    iqr_ns: float
    p90_ns: float
    p99_ns: float
    ci95_low_ns: float
    ci95_high_ns: float
    noisy: bool
    wall_over_cpu: float | None = None  # total wall / total process CPU time, where the work is on the host CPU
    noise: str = ""  # why the timing is noisy, "" when it is not

    @classmethod
    def from_samples(cls, samples_ns: list[float], *, cpu_ns: list[float] | None = None, seed: int = 0) -> Stats:
        """Statistics of wall-time samples; with `cpu_ns` (the process CPU time of the same samples) also the
        wall / CPU ratio, flagged above CONTENTION_RATIO."""
        import numpy as np

        if not samples_ns:
            raise ValueError("no timing samples")
        a = np.asarray(samples_ns, dtype=np.float64)
        q1, med, q3, p90, p99 = np.percentile(a, [25, 50, 75, 90, 99])
        rng = np.random.default_rng(seed)
        boot = np.median(rng.choice(a, size=(BOOTSTRAP_RESAMPLES, a.size), replace=True), axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        reasons = []
        if med > 0 and (q3 - q1) / med > NOISE_THRESHOLD:
            reasons.append(f"IQR/median {(q3 - q1) / med:.0%} > {NOISE_THRESHOLD:.0%}")
        ratio = None
        if cpu_ns:
            cpu_total = float(np.sum(cpu_ns))
            ratio = float(a.sum()) / cpu_total if cpu_total > 0 else float("inf")
            if ratio > CONTENTION_RATIO:
                reasons.append(
                    f"wall time {ratio:.2g}x the process's CPU time (> {CONTENTION_RATIO:g}x): it waited for a core"
                )
        return cls(
            n=int(a.size),
            median_ns=float(med),
            mean_ns=float(a.mean()),
            min_ns=float(a.min()),
            q1_ns=float(q1),
            q3_ns=float(q3),
            iqr_ns=float(q3 - q1),
            p90_ns=float(p90),
            p99_ns=float(p99),
            ci95_low_ns=float(lo),
            ci95_high_ns=float(hi),
            noisy=bool(reasons),
            wall_over_cpu=ratio,
            noise="; ".join(reasons),
        )


@dataclass
class Measurement:
    """Raw per-call samples of one timed case plus how they were taken."""

    samples_ns: list[float]
    calls_per_sample: int
    warmup_calls: int
    method: str
    notes: dict[str, Any] = field(default_factory=dict)
    cpu_ns: list[float] | None = None  # process CPU time per call of each sample, where the work is on the host
    stats: Stats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = Stats.from_samples(self.samples_ns, cpu_ns=self.cpu_ns)

    def throughput(self, flops: float, bytes_moved: float) -> dict[str, float | None]:
        """TFLOP/s and GB/s at the median latency."""
        seconds = self.stats.median_ns * 1e-9
        return {
            "tflops": flops / seconds / 1e12 if seconds > 0 and flops else None,
            "gbps": bytes_moved / seconds / 1e9 if seconds > 0 and bytes_moved else None,
        }

    def to_record(self, flops: float, bytes_moved: float) -> dict[str, Any]:
        return {
            "method": self.method,
            **self.notes,
            "calls_per_sample": self.calls_per_sample,
            "warmup_calls": self.warmup_calls,
            "samples_ns": [round(s, 1) for s in self.samples_ns],
            "cpu_ns": None if self.cpu_ns is None else [round(s, 1) for s in self.cpu_ns],
            **asdict(self.stats),
            **self.throughput(flops, bytes_moved),
            "flops": flops,
            "bytes": bytes_moved,
        }


def measure(fn: Callable[[], object], timer: Timer, config: TimingConfig = TimingConfig()) -> Measurement:
    """Warm up, pick calls per sample so each sample lasts >= min_sample_s, then sample to the budget."""
    warmup_calls = 0
    per_call = wall_per_call = math.inf
    warm_start = time.perf_counter()
    while True:
        started = time.perf_counter_ns()
        per_call = min(per_call, timer.elapsed_ns(fn, 1))
        wall_per_call = min(wall_per_call, time.perf_counter_ns() - started)
        warmup_calls += 1
        if time.perf_counter() - warm_start >= config.warmup_s and warmup_calls >= 2:
            break
    per_call = max(per_call, 1.0)
    calls = max(1, math.ceil(config.min_sample_s * 1e9 / per_call))
    # A timer that under-reports (a cheat's, issue 23) must not make one sample outlast the whole budget.
    calls = min(calls, max(1, int(config.budget_s * 1e9 / max(wall_per_call, 1.0))))
    cap = getattr(timer, "max_calls_per_sample", None)
    if cap:
        calls = min(calls, cap)
    wanted = int(config.budget_s * 1e9 / (per_call * calls))
    n_samples = min(config.max_samples, max(config.min_samples, wanted))
    samples: list[float] = []
    cpu: list[float] = []
    deadline = time.perf_counter() + 2 * config.budget_s  # the warm-up estimate may have been optimistic
    for _ in range(n_samples):
        cpu_start = time.process_time_ns()
        samples.append(timer.elapsed_ns(fn, calls) / calls)
        cpu.append((time.process_time_ns() - cpu_start) / calls)
        if len(samples) >= config.min_samples and time.perf_counter() > deadline:
            break
    notes = dict(getattr(timer, "notes", {}) or {})
    return Measurement(
        samples, calls, warmup_calls, timer.method, notes, cpu if getattr(timer, "host_cpu", False) else None
    )
