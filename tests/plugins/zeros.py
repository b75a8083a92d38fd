"""Planted bug: attention that returns zeros of the right shape and dtype."""

from __future__ import annotations

from typing import ClassVar

import torch

from backends.torch_cpu import TorchCpu


class Zeros(TorchCpu):
    name: ClassVar[str] = "bug-zeros"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        return torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype)
