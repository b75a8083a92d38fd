"""Planted bug: causal attention aligned top-left (torch SDPA's `is_causal` when Sq != Skv).

Right for prefill (Sq = Skv, no padding), wrong for chunked prefill and decode: query i sees keys j <= i instead of
j <= i + (L - Sq).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from backends.torch_cpu import TorchCpu


class TopLeftCausal(TorchCpu):
    name: ClassVar[str] = "bug-top-left-causal"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        B, Hq, Sq, _ = q.shape
        Skv = k.shape[2]
        if kv_lens is None and window is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=Hq != k.shape[1])
        i = torch.arange(Sq).view(1, Sq, 1)
        j = torch.arange(Skv).view(1, 1, Skv)
        lens = kv_lens.view(-1, 1, 1) if kv_lens is not None else torch.full((B, 1, 1), Skv)
        vis = (j < lens) & (j <= i) if causal else (j < lens)  # the bug: no (L - Sq) offset
        if window is not None:
            vis = vis & (j > i - window)
        mask = vis[:, None]  # [B, 1, Sq, Skv]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=Hq != k.shape[1])
        return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
