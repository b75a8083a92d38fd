"""Timing statistics and the adaptive sampling plan, with a deterministic clock so nothing flakes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

from harness.timing import Measurement, Stats, TimingConfig, WallClockTimer, measure


def test_stats_from_known_samples() -> None:
    samples = [float(x) for x in range(1, 101)]  # 1..100 ns
    s = Stats.from_samples(samples)
    assert s.n == 100 and s.median_ns == 50.5 and s.min_ns == 1 and s.mean_ns == 50.5
    assert s.q1_ns == pytest.approx(np.percentile(samples, 25)) and s.iqr_ns == pytest.approx(49.5)
    assert s.p90_ns == pytest.approx(90.1) and s.p99_ns == pytest.approx(99.01)
    assert s.ci95_low_ns < s.median_ns < s.ci95_high_ns
    assert s.noisy  # IQR/median ~ 0.98


def test_tight_samples_are_not_noisy_and_ci_is_narrow() -> None:
    s = Stats.from_samples([1000.0 + (i % 5) for i in range(50)])
    assert not s.noisy and s.ci95_high_ns - s.ci95_low_ns <= 4


def test_empty_samples_raise() -> None:
    with pytest.raises(ValueError, match="no timing samples"):
        Stats.from_samples([])


@dataclass
class FakeClockTimer:
    """A timer with a fixed cost per call: lets the test check the sampling plan exactly."""

    ns_per_call: float
    calls_seen: int = 0
    method: str = "fake"

    def elapsed_ns(self, fn, calls: int) -> float:
        for _ in range(calls):
            fn()
        self.calls_seen += calls
        return self.ns_per_call * calls


def test_short_ops_get_many_calls_per_sample() -> None:
    timer = FakeClockTimer(ns_per_call=2_000)  # 2 us: under the 1 ms sample floor
    m = measure(lambda: None, timer, TimingConfig(budget_s=0.05, warmup_s=0.0, min_sample_s=1e-3, max_samples=1000))
    assert m.calls_per_sample == 500  # 1 ms / 2 us
    assert m.stats.n == 50  # 50 ms budget / (500 calls x 2 us)
    assert m.stats.median_ns == 2_000 and m.method == "fake"


def test_long_ops_are_one_call_per_sample_with_a_minimum_of_samples() -> None:
    timer = FakeClockTimer(ns_per_call=50e6)  # 50 ms per call, budget of 10 ms
    m = measure(lambda: None, timer, TimingConfig(budget_s=0.01, warmup_s=0.0, min_samples=5))
    assert m.calls_per_sample == 1 and m.stats.n == 5 and m.warmup_calls == 2


def test_throughput_and_record() -> None:
    m = Measurement([1e6, 1e6, 1e6], calls_per_sample=1, warmup_calls=1, method="x")  # 1 ms
    assert m.throughput(2e9, 1e9) == {"tflops": pytest.approx(2.0), "gbps": pytest.approx(1000.0)}
    rec = m.to_record(2e9, 1e9)
    assert rec["samples_ns"] == [1e6] * 3 and rec["median_ns"] == 1e6 and rec["tflops"] == pytest.approx(2.0)


def test_wall_clock_timer_synchronizes_around_the_calls() -> None:
    events: list[str] = []
    timer = WallClockTimer(lambda: events.append("sync"))
    elapsed = timer.elapsed_ns(lambda: events.append("call"), 3)
    assert events == ["sync", "call", "call", "call", "sync"] and elapsed > 0


def test_wall_time_above_cpu_time_is_flagged_as_contention() -> None:
    """Uniform contention leaves samples tight (small IQR) but every one slow: wall time exceeds CPU time."""
    wall = [1000.0 + (i % 5) for i in range(50)]
    tight = Stats.from_samples(wall, cpu_ns=[w / 1.05 for w in wall])  # 5% waiting: scheduler noise
    assert not tight.noisy and tight.wall_over_cpu == pytest.approx(1.05) and tight.noise == ""
    contended = Stats.from_samples(wall, cpu_ns=[w / 2.5 for w in wall])  # the ratio seen with 3 runs on 2 cores
    assert contended.noisy and "2.5x the process's CPU time" in contended.noise
    assert Stats.from_samples(wall).wall_over_cpu is None  # a device timer: no CPU-time verdict


def test_measure_records_cpu_time_on_host_timers_and_flags_a_process_that_waits() -> None:
    """An op that sleeps (waits, as a process starved of a core does) is flagged; device timers record no CPU."""
    config = TimingConfig(budget_s=0.02, warmup_s=0.002, min_samples=3, max_samples=5)
    waiting = measure(lambda: time.sleep(0.002), WallClockTimer(lambda: None, host_cpu=True), config)
    assert waiting.cpu_ns is not None and len(waiting.cpu_ns) == len(waiting.samples_ns)
    assert waiting.stats.noisy and "waited for a core" in waiting.stats.noise
    device = measure(lambda: time.sleep(0.002), WallClockTimer(lambda: None), config)
    assert device.cpu_ns is None and "waited" not in device.stats.noise
    assert measure(lambda: None, WallClockTimer(lambda: None), config).to_record(0, 0)["cpu_ns"] is None
