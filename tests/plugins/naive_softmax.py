"""Planted bug: softmax without max-subtraction, computed in the case dtype (overflows in float16)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from backends.torch_cpu import TorchCpu
from harness.ops import visible_keys


class NaiveSoftmax(TorchCpu):
    name: ClassVar[str] = "bug-naive-softmax"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = (q @ k.transpose(-1, -2)) * scale  # [B, Hq, Sq, Skv] in the case dtype
        vis = visible_keys(q.shape[2], k.shape[2], batch=q.shape[0], causal=causal, window=window, kv_lens=kv_lens)
        p = torch.exp(scores).masked_fill(~vis[:, None], 0.0)  # the bug: exp(s) instead of exp(s - max)
        denom = p.sum(-1, keepdim=True)
        return (p @ v) / torch.where(denom > 0, denom, torch.ones_like(denom))
