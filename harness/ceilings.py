"""The physical-limit guard: a timing that implies more FLOP/s or bytes/s than the device can deliver is not a
measurement but a sign the work was not done (issue 23).

The ceilings are the device's `harness calibrate` file where one is stored. On the host CPU (CPU backends and
simulators, whose work runs there) a quick measurement, made once per process and logged, stands in or adds to
it: a float32 and a bfloat16 matmul and a 64 MiB copy and sum on one thread, the best sample of each by CPU
time, times the cores.

Margins, chosen so an honest kernel is never flagged while a skipped computation (100x and more) always is:
- x1.5 over a stored calibration (a kernel can beat a calibration's matmul size a little, never by half again);
- x3 over the quick measurement (short, and possibly taken while another job held a core);
- bytes/s of a case moving less than the calibration's copy buffer may come from cache, not memory: the
  bandwidth margin is multiplied by CACHE_ALLOWANCE (x10) for those.
The compute ceiling is the fastest math mode measured (a bfloat16 case may be computed in float32 and vice versa).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from harness.calibrate import Calibration
from harness.lazy import torch
from harness.timing import Measurement, TimingConfig, WallClockTimer, measure

log = logging.getLogger(__name__)

CALIBRATED_MARGIN = 1.5
QUICK_MARGIN = 3.0
CACHE_ALLOWANCE = 10.0
QUICK_MATMUL_N = {"float32": 384, "bfloat16": 256}
QUICK_COPY_BYTES = 64 << 20
_QUICK: dict[str, Ceiling] = {}


@dataclass(frozen=True)
class Ceiling:
    """A device's measured peaks, the margin over them that an honest timing stays within, and their source."""

    tflops: float
    gbps: float
    copy_bytes: int  # the buffer the bandwidth was measured on: smaller cases may run from cache
    margin: float
    source: str

    def limits(self, nbytes: float) -> tuple[float, float, float]:
        """(TFLOP/s limit, GB/s limit, the bandwidth margin) for a case moving `nbytes`."""
        bw_margin = self.margin * (CACHE_ALLOWANCE if nbytes < self.copy_bytes else 1.0)
        return self.tflops * self.margin, self.gbps * bw_margin, bw_margin


def calibrated(cal: Calibration) -> Ceiling:
    return Ceiling(
        max(cal.matmul_tflops.values(), default=0.0),
        cal.bandwidth_gbps,
        cal.copy_bytes,
        CALIBRATED_MARGIN,
        f"harness calibrate ({cal.device_name})",
    )


def quick_host_ceiling() -> Ceiling:
    """The host CPU's quick ceilings, measured on first use in this process and kept.

    Measured on one thread by process CPU time (which a wait for a core does not count: the machine may be busy
    with other jobs) and multiplied by the cores this process may use: a figure no honest kernel can beat."""
    if "host" not in _QUICK:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        config = TimingConfig(budget_s=0.02, warmup_s=0.005, min_samples=3, max_samples=20, min_sample_s=2e-4)
        timer = WallClockTimer(lambda: None, host_cpu=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            peaks = []
            for dtype, n in QUICK_MATMUL_N.items():
                g = torch.Generator().manual_seed(0)
                a = torch.randn(n, n, generator=g).to(getattr(torch, dtype))
                b = torch.randn(n, n, generator=g).to(getattr(torch, dtype))
                peaks.append(2.0 * n**3 / _best_ns(measure(lambda a=a, b=b: a @ b, timer, config)) / 1e3)
            words = QUICK_COPY_BYTES // 4
            src, dst = torch.ones(words), torch.zeros(words)
            copy = 2.0 * QUICK_COPY_BYTES / _best_ns(measure(lambda: dst.copy_(src), timer, config))
            read = QUICK_COPY_BYTES / _best_ns(measure(src.sum, timer, config))  # bytes per ns = GB/s
        finally:
            torch.set_num_threads(threads)
        tflops, gbps = max(peaks) * cores, max(copy, read) * cores
        _QUICK["host"] = Ceiling(tflops, gbps, QUICK_COPY_BYTES, QUICK_MARGIN, "a quick measurement of this CPU")
        log.info("host CPU ceilings for the timing guard: %.3g TFLOP/s, %.3g GB/s (%d cores)", tflops, gbps, cores)
    return _QUICK["host"]


def _best_ns(m: Measurement) -> float:
    """The fastest call of a measurement by CPU time (by wall time where the CPU time is missing or zero)."""
    cpu = [c for c in (m.cpu_ns or []) if c > 0]
    return max(min(cpu) if cpu else m.stats.min_ns, 1.0)


def violation(ceilings: list[Ceiling], flops: float, nbytes: float, seconds: float) -> str | None:
    """Why a timing is faster than every ceiling allows (the most generous one is quoted); None if it is not."""
    if seconds <= 0 or not ceilings:
        return None
    tflops = flops / seconds / 1e12 if flops else 0.0
    gbps = nbytes / seconds / 1e9 if nbytes else 0.0
    best = max(ceilings, key=lambda c: c.limits(nbytes)[0])
    if tflops and best.tflops and tflops > best.limits(nbytes)[0]:
        return (
            f"faster than this device can compute: {tflops:.3g} TFLOP/s against a {best.tflops:.3g} TFLOP/s "
            f"ceiling (x{best.margin:g} margin; {best.source})"
        )
    best = max(ceilings, key=lambda c: c.limits(nbytes)[1])
    limit_gbps, bw_margin = best.limits(nbytes)[1:]
    if gbps and best.gbps and gbps > limit_gbps:
        return (
            f"faster than this device can compute: {gbps:.3g} GB/s against a {best.gbps:.3g} GB/s ceiling "
            f"(x{bw_margin:g} margin; {best.source})"
        )
    return None
