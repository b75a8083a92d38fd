"""GPU timing: CUDA events around many calls, CUDA-graph replay, cold-L2 flushes.

Per-call event pairs overstate a tiny kernel many times over (the anchors: 26 us against 1 us replayed from a
graph), so a sample is many back-to-back calls between two events, and by default those calls are captured once
into a CUDA graph and replayed, which takes host launch overhead out of the figure. An op that cannot be captured
(a host synchronization inside, say) falls back to events, and the record says so. In cold-cache mode a buffer
twice the L2 size is overwritten before every call, outside the timed region, and each sample is one call.

Every sample is also timed on the host around a device-wide synchronize, so work an op leaves on another stream
(which the events never see) shows: stream_check.py judges the pairs, and a verdict of work outside the timed
stream is left in `notes["invalid_reason"]` (with the figures in `notes["stream_check"]`), which the timing
section carries. The host clock reads sit outside the events, so the timed figure is unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from harness.backends.cuda.stream_check import judge_streams
from harness.timing import TimingConfig

log = logging.getLogger(__name__)

GRAPH_MAX_CALLS = 32  # calls captured into one graph; a sample replays it as often as needed


class CudaTimer:
    """Times `calls` calls of `fn` on the current CUDA stream; see the module docstring for the methods."""

    def __init__(self, config: TimingConfig, l2_bytes: int, *, graphs: bool = True, cold_cache: bool = False) -> None:
        self.config = config
        self.use_graphs = graphs
        self.max_calls_per_sample = 1 if cold_cache else None
        self.notes: dict[str, Any] = {"cold_cache": cold_cache}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._flush = torch.empty(2 * max(l2_bytes, 1 << 20), dtype=torch.uint8, device="cuda") if cold_cache else None
        self._used_graph = False
        self._pairs: list[tuple[float, float]] = []  # (event ns, device-wide wall ns) of each sample
        self._pairs_calls = 0  # the calls per sample of those pairs (warm-up samples of 1 call are dropped)

    @property
    def method(self) -> str:
        return "cuda_graph" if self._used_graph else "cuda_events"

    def elapsed_ns(self, fn: Callable[[], object], calls: int) -> float:
        if self._flush is not None:
            self._flush.fill_(1)  # evict the inputs from L2, before the first event
        graph = self._graph(fn, min(calls, GRAPH_MAX_CALLS)) if self.use_graphs else None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()  # every stream idle (the flush done): the wall clock below sees only this sample
        wall_start = time.perf_counter_ns()
        if graph is None:
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            scale = 1.0
        else:
            per_graph = min(calls, GRAPH_MAX_CALLS)
            replays = math.ceil(calls / per_graph)
            start.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            scale = calls / (replays * per_graph)
        torch.cuda.synchronize()  # device-wide: waits for work on any stream, which end.synchronize() would not
        wall_ns = float(time.perf_counter_ns() - wall_start)
        event_ns = start.elapsed_time(end) * 1e6
        self._judge_streams(event_ns, wall_ns, calls)
        return event_ns * scale

    def _judge_streams(self, event_ns: float, wall_ns: float, calls: int) -> None:
        """Add the sample to the stream check and leave its verdict in `notes` (outside the timed region)."""
        if calls != self._pairs_calls:  # the measurement proper starts: warm-up samples of another size go
            self._pairs, self._pairs_calls = [], calls
        self._pairs.append((event_ns, wall_ns))
        verdict = judge_streams([e for e, _ in self._pairs], [w for _, w in self._pairs])
        self.notes["stream_check"] = verdict.to_record()
        if verdict.reason:
            self.notes["invalid_reason"] = verdict.reason
        else:
            self.notes.pop("invalid_reason", None)

    def _graph(self, fn: Callable[[], object], n: int) -> torch.cuda.CUDAGraph | None:
        """A graph of n calls of fn, captured once; None (and events from then on) when fn cannot be captured."""
        if n in self._graphs:
            return self._graphs[n]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):  # a warm-up on a side stream, as capture requires
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(n):
                    fn()
        except Exception as exc:  # capture refused (a host sync, a CPU fallback): time with events instead
            torch.cuda.synchronize()
            self.use_graphs = False
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.notes["graph_error"] = reason[:300]
            log.info("CUDA graph capture failed, timing with events: %s", reason)
            return None
        self._graphs[n] = graph
        self._used_graph = True
        return graph
