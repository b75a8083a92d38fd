"""A planted batch-invariance fault: correct attention whose reduction order depends on the batch it is served in.

Flash-decoding kernels (vLLM, FlashInfer, FlashAttention's split-KV) pick how many pieces to split the keys into
from the batch size: a small batch leaves the device idle, so its keys are split and the pieces merged through
their log-sum-exp. Every result is right to rounding, so parity passes; but a request served alone takes the split
path and the same request in a batch does not, so its output changes with its neighbours: not batch invariant.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from harness import ops, paged
from harness.backends.torch_cpu import TorchCpu

SPLIT_BELOW = 2  # batches smaller than this are split along the keys (a lone request: B = 1)


def _split_kv(q, k, v, vis, scale):  # type: ignore[no-untyped-def]
    """Attention with the keys in two halves merged by log-sum-exp, in float32. q [B,Hq,Sq,D], k/v [B,Hq,Skv,*],
    vis [B,1,Sq,Skv] -> [B,Hq,Sq,Dv]."""
    s = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B, Hq, Sq, Skv]
    s = s.masked_fill(~vis, -math.inf)
    h = max(1, s.shape[-1] // 2)
    parts = []
    for sl in (slice(0, h), slice(h, None)):
        m = s[..., sl].amax(-1, keepdim=True)  # [B, Hq, Sq, 1]
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s[..., sl] - m_safe)
        parts.append((m, p.sum(-1, keepdim=True), p @ v[..., sl, :].float()))
    (m1, l1, o1), (m2, l2, o2) = parts
    m = torch.maximum(m1, m2)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w1, w2 = torch.exp(m1 - m), torch.exp(m2 - m)  # 0 for a half that sees no key (its max is -inf)
    out = (o1 * w1 + o2 * w2) / (l1 * w1 + l2 * w2)
    return torch.nan_to_num(out, nan=0.0)  # a row that sees no key: 0 / 0, the contract says zeros


class BatchVariant(TorchCpu):
    """torch-cpu, except that a batch smaller than SPLIT_BELOW splits its keys in two (flash-decoding's split-KV):
    right either way, but a sequence alone is computed in another order than in a batch."""

    name: ClassVar[str] = "bug-batch-variant"

    @paged.gathering  # the paged form: gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        B, Hq, Sq, D = q.shape
        if B >= SPLIT_BELOW:
            return super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
        group = Hq // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [B, Hq, Skv, *]
        vis = ops.visible_keys(Sq, k.shape[2], batch=B, causal=causal, window=window, kv_lens=kv_lens)[:, None]
        out = _split_kv(q, k, v, vis, 1.0 / math.sqrt(D) if scale is None else scale)
        return out.to(q.dtype)
