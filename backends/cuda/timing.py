"""GPU timing: CUDA events around many calls, CUDA-graph replay, cold-L2 flushes.

Per-call event pairs overstate a tiny kernel many times over (the anchors: 26 us against 1 us replayed from a
graph), so a sample is many back-to-back calls between two events, and by default those calls are captured once
into a CUDA graph and replayed, which takes host launch overhead out of the figure. An op that cannot be captured
(a host synchronization inside, say) falls back to events, and the record says so. In cold-cache mode a buffer
twice the L2 size is overwritten before every call, outside the timed region, and each sample is one call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

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

    @property
    def method(self) -> str:
        return "cuda_graph" if self._used_graph else "cuda_events"

    def elapsed_ns(self, fn: Callable[[], object], calls: int) -> float:
        if self._flush is not None:
            self._flush.fill_(1)  # evict the inputs from L2, before the first event
        graph = self._graph(fn, min(calls, GRAPH_MAX_CALLS)) if self.use_graphs else None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if graph is None:
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e6
        per_graph = min(calls, GRAPH_MAX_CALLS)
        replays = math.ceil(calls / per_graph)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e6 * calls / (replays * per_graph)

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
