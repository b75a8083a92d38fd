"""Work outside the timed stream: the verdict, from numbers alone (no GPU needed to test it).

CUDA events time what runs on the stream they are recorded on. An op that launches its work on another stream
and never makes the caller's stream wait for it (KernelBench's issue #82) is timed at nearly nothing. Each sample
is therefore also timed on the host around a device-wide `torch.cuda.synchronize()`: that wall time includes
every stream's work. An honest op's wall time exceeds its event time only by a synchronize's latency (tens of
microseconds); work left on a side stream makes the wall time a multiple of it. One slow synchronize (a
preempted host) must not condemn a timing, so the verdict asks for the excess in most samples.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

OUTSIDE_RATIO = 1.5  # a sample's device-wide wall time above this multiple of its event time...
OUTSIDE_SLACK_NS = 200_000.0  # ...and above it by more than this (a synchronize's latency, with room to spare)...
OUTSIDE_SHARE = 0.75  # ...in at least this share of the samples: consistently, not one preempted sample
MIN_SAMPLES = 3  # fewer samples than this: no verdict (valid)


@dataclass(frozen=True)
class StreamVerdict:
    """The outcome over a timing's samples: how many there were, how many had work outside the timed stream, the
    median wall / event ratio, and the invalid reason ("" when the work stayed on the timed stream)."""

    samples: int
    outside: int
    median_ratio: float | None
    reason: str

    def to_record(self) -> dict[str, object]:
        ratio = None if self.median_ratio is None else round(self.median_ratio, 3)
        return {"samples": self.samples, "outside": self.outside, "median_wall_over_events": ratio}


def judge_streams(
    event_ns: Sequence[float],
    wall_ns: Sequence[float],
    *,
    ratio: float = OUTSIDE_RATIO,
    slack_ns: float = OUTSIDE_SLACK_NS,
    share: float = OUTSIDE_SHARE,
    min_samples: int = MIN_SAMPLES,
) -> StreamVerdict:
    """Judge samples given as (event time, device-wide wall time) pairs in ns, both for the whole sample."""
    pairs = list(zip(event_ns, wall_ns, strict=True))
    n = len(pairs)
    if n == 0:
        return StreamVerdict(0, 0, None, "")
    median_ratio = statistics.median(w / e if e > 0 else math.inf for e, w in pairs)
    outside = sum(1 for e, w in pairs if w > ratio * e and w - e > slack_ns)
    if n < min_samples or outside < share * n:
        return StreamVerdict(n, outside, median_ratio, "")
    excess_ms = statistics.median(w - e for e, w in pairs) / 1e6
    reason = (
        f"work outside the timed stream: a device-wide synchronize took {median_ratio:.3g}x the stream's event "
        f"time (median excess {excess_ms:.3g} ms a sample; {outside} of {n} samples beyond x{ratio:g} and "
        f"{slack_ns / 1e6:g} ms)"
    )
    return StreamVerdict(n, outside, median_ratio, reason)
