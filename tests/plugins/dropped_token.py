"""Planted bug: the last query token of every sequence comes back as zeros (a dropped token)."""

from __future__ import annotations

from typing import ClassVar

from backends.torch_cpu import TorchCpu


class DroppedToken(TorchCpu):
    name: ClassVar[str] = "bug-dropped-token"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        out = super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
        out = out.clone()
        out[:, :, -1, :] = 0  # the bug
        return out
