"""A correct implementation with another summation order: blockwise online softmax (flash-attention style).

Keys are visited in blocks of 16 with a running max and running sum, accumulating in float32, and the output
is rounded once to the case dtype. Different from both the reference and SDPA, yet correct: it must pass.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from backends.torch_cpu import TorchCpu
from harness.ops import visible_keys

BLOCK = 16


class BlockwiseOnline(TorchCpu):
    name: ClassVar[str] = "blockwise-online"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        B, Hq, Sq, D = q.shape
        Skv = k.shape[2]
        group = Hq // k.shape[1]
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        qf = q.float() * scale
        kf = k.float().repeat_interleave(group, dim=1)
        vf = v.float().repeat_interleave(group, dim=1)
        vis = visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens)[:, None]
        running_max = torch.full((B, Hq, Sq, 1), -math.inf)
        running_sum = torch.zeros(B, Hq, Sq, 1)
        acc = torch.zeros(B, Hq, Sq, v.shape[-1])
        for start in range(0, Skv, BLOCK):
            sl = slice(start, start + BLOCK)
            s = (qf @ kf[:, :, sl].transpose(-1, -2)).masked_fill(~vis[..., sl], -math.inf)
            new_max = torch.maximum(running_max, s.amax(-1, keepdim=True))
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            correction = torch.exp(running_max - safe_max)
            p = torch.exp(s - safe_max)
            running_sum = running_sum * correction + p.sum(-1, keepdim=True)
            acc = acc * correction + p @ vf[:, :, sl]
            running_max = new_max
        out = acc / torch.where(running_sum > 0, running_sum, torch.ones_like(running_sum))
        return out.to(q.dtype)
