"""Test plugin: torch-cpu variants that look fast without doing the work (issue 23). Each must be flagged."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from harness.backends.torch_cpu import TorchCpu
from harness.timing import TimingConfig, WallClockTimer


class MemoCheat(TorchCpu):
    """Returns the output cached for the same input tensors, keyed on their data pointers."""

    name: ClassVar[str] = "memo-cheat"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if key not in self._memo:
            self._memo[key] = super().attention(q, k, v, **kw)
        return self._memo[key]


class BufferCheat(TorchCpu):
    """A bound call computes on its first call and returns that output buffer ever after."""

    name: ClassVar[str] = "buffer-cheat"

    def bind(self, op: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Callable[[], Any]:
        honest = super().bind(op, args, kwargs)
        kept: list[Any] = []

        def call() -> Any:
            if not kept:
                kept.append(honest())
            return kept[0]

        return call


class ShapeCache(TorchCpu):
    """Returns the output of the first call with the same input shapes, whatever the data."""

    name: ClassVar[str] = "shape-cache"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        key = (tuple(q.shape), tuple(k.shape), q.dtype)
        if key not in self._cache:
            self._cache[key] = super().attention(q, k, v, **kw)
        return self._cache[key]


class InputWriter(TorchCpu):
    """Computes honestly, then scales its query in place (a scratch buffer it did not own)."""

    name: ClassVar[str] = "input-writer"

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        out = super().attention(q, k, v, **kw)
        q.mul_(1.0001)
        return out


class _FastTimer(WallClockTimer):
    def elapsed_ns(self, fn: Callable[[], object], calls: int) -> float:
        return super().elapsed_ns(fn, calls) / 1e4


class TooFast(TorchCpu):
    """Honest outputs, a timer that reports a ten-thousandth of the time taken."""

    name: ClassVar[str] = "too-fast"

    def timer(self, config: TimingConfig | None = None) -> WallClockTimer:
        return _FastTimer(self.synchronize, host_cpu=True)


class DecodeMemo(TorchCpu):
    """Honest prefill; a one-token decode step returns the logits it gave before for the same KV-cache object
    at the same length (the cache is cropped back each timed step, so after the first it never recomputes)."""

    name: ClassVar[str] = "decode-memo"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._memo: weakref.WeakKeyDictionary[Any, dict[int, torch.Tensor]] = weakref.WeakKeyDictionary()

    def causal_lm(self, model: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        if cache is None or return_model or input_ids.shape[1] != 1:
            return super().causal_lm(model, input_ids, cache=cache, return_model=return_model)
        seen = self._memo.setdefault(cache, {})
        length = cache.get_seq_length()
        if length not in seen:
            seen[length] = super().causal_lm(model, input_ids, cache=cache)
        return seen[length]


class KvWriter(TorchCpu):
    """Honest logits; each one-token decode step then scales the first layer's cached keys in place."""

    name: ClassVar[str] = "kv-writer"

    def causal_lm(self, model: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        out = super().causal_lm(model, input_ids, cache=cache, return_model=return_model)
        if cache is not None and not return_model and input_ids.shape[1] == 1:
            cache.layers[0].keys.mul_(1.0001)
        return out
