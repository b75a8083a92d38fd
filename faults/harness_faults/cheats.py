"""Planted timing cheats: backends whose parity passes but whose timings are worthless.

Each reproduces a trick that fooled a public benchmark (KernelBench's issue #82 and its adversarial tests; MLPerf's
TEST04 for results cached between queries) on top of an honest backend. The parity run sees a correct output, so
only the timed path's checks can catch them: outputs checked under timing on rotating input sets, the
physical-limit guard, input checksums, and (CUDA) device-wide synchronization against the stream's events.
`harness selftest` requires every timed case of each cheat to be marked invalid by the check meant for it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness.backends.cuda.backend import Cuda
from harness.backends.torch_cpu import TorchCpu

AttentionKey = tuple[Any, ...]


def _call_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: Any) -> AttentionKey:
    """What a cache of attention outputs is keyed on apart from the input tensors: shapes, dtype, arguments."""
    kv_lens = rest[-1]
    lens = None if kv_lens is None else tuple(kv_lens.tolist())
    return (tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, *rest[:-1], lens)


class PointerMemo(TorchCpu):
    """Returns the cached output when called again on the same input tensors, keyed on their data pointers: right
    for every input set it has seen (so the outputs check holds), about a microsecond a call whatever the shape."""

    name: ClassVar[str] = "cheat-pointer-memo"

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[AttentionKey, torch.Tensor] = {}

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr(), _call_key(q, k, v, causal, window, scale, kv_lens))
        if key not in self._memo:  # the cheat: the inputs' contents are never looked at again
            self._memo[key] = super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
        return self._memo[key]


class StaleOutputBuffer(TorchCpu):
    """Computes into its output buffer on the first call of a shape and returns that buffer untouched on every
    later call of the same shape, whatever the inputs hold (a kernel whose launch was skipped)."""

    name: ClassVar[str] = "cheat-stale-output"

    def __init__(self) -> None:
        super().__init__()
        self._buffers: dict[AttentionKey, torch.Tensor] = {}

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        key = _call_key(q, k, v, causal, window, scale, None)  # shapes only: the lengths' values are data too
        if key not in self._buffers:  # the cheat: later calls of this shape recompute nothing
            self._buffers[key] = super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
        return self._buffers[key]


class WritesIntoInput(TorchCpu):
    """Computes the right output, then bumps the key cache past each sequence's length in place (scratch space it
    thinks nobody reads): outputs stay right, the caller's input is not what it passed in. Without kv_lens it
    bumps the last key, which the last query sees: meant for the ragged workloads (decode, chunked prefill)."""

    name: ClassVar[str] = "cheat-writes-input"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        out = super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
        lens = kv_lens.tolist() if kv_lens is not None else [k.shape[2] - 1] * k.shape[0]
        for b, length in enumerate(lens):
            k[b, :, int(length) :] += 1  # the cheat: keys past the sequence's length, changed in place
        return out


class SideStream(Cuda):
    """CUDA attention launched on a side stream the caller's stream never waits for: events on the current
    stream time (nearly) nothing. Outputs are read after a device-wide synchronize, so parity passes."""

    name: ClassVar[str] = "cheat-side-stream"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._side: Any = None

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        if self._side is None:
            self._side = torch.cuda.Stream()
        self._side.wait_stream(torch.cuda.current_stream())  # the inputs are ready; the caller is never told back
        with torch.cuda.stream(self._side):  # the cheat: no current_stream().wait_stream(side) after
            return super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        torch.cuda.synchronize()  # every stream: the parity check reads finished outputs
        return super().to_host(t)
