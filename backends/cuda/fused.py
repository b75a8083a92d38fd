"""Fused Triton kernels for the MoE layer's memory-bound steps, with torch fallbacks.

Eagerly, SwiGLU over the [T*k, 2F] grouped-GEMM output is two kernels and a temporary, and the combine is a gather
of [T*k, H] rows back to token order plus a reduction: each a full extra pass over the largest activations of the
layer. One kernel each reads them once, in float32 arithmetic with one rounding at the store. Triton is imported
only when a kernel is first built; without it (CPU machines) or off CUDA, the torch forms run.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BLOCK = 1024


def triton_usable(t: torch.Tensor) -> bool:
    return t.is_cuda and importlib.util.find_spec("triton") is not None


@functools.cache
def _kernels() -> dict[str, Any]:
    """Build the kernels once (imports triton; never at import time of this module)."""
    import triton
    import triton.language as tl

    @triton.jit
    def swiglu_kernel(h_ptr, out_ptr, F, stride_h, stride_o, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < F
        g = tl.load(h_ptr + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(h_ptr + row * stride_h + F + cols, mask=mask, other=0.0).to(tl.float32)
        a = g / (1.0 + tl.exp(-g)) * u
        tl.store(out_ptr + row * stride_o + cols, a.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def combine_kernel(y_ptr, slot_ptr, w_ptr, out_ptr, H, stride_y, stride_o, K: tl.constexpr, BLOCK: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < H
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(K):
            s = tl.load(slot_ptr + t * K + j).to(tl.int64)  # row of y holding slot j of token t
            w = tl.load(w_ptr + t * K + j).to(tl.float32)
            y = tl.load(y_ptr + s * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
            acc += w * y
        tl.store(out_ptr + t * stride_o + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)

    return {"swiglu": swiglu_kernel, "combine": combine_kernel, "cdiv": triton.cdiv}


def swiglu_rows(h: torch.Tensor, f: int, use_triton: bool) -> torch.Tensor:
    """[M, 2F] (gate | up) -> silu(gate) * up, [M, F]."""
    if not use_triton:
        return F.silu(h[:, :f]) * h[:, f:]
    k = _kernels()
    out = h.new_empty(h.shape[0], f)  # [M, F]
    if h.shape[0]:
        k["swiglu"][(h.shape[0], k["cdiv"](f, BLOCK))](h, out, f, h.stride(0), out.stride(0), BLOCK=BLOCK)
    return out


def combine_rows(
    y: torch.Tensor, slot_of: torch.Tensor, weights: torch.Tensor, out_dtype: torch.dtype, use_triton: bool
) -> torch.Tensor:
    """out[t] = sum_j weights[t, j] * y[slot_of[t*k + j]]: [T*k, H] rows in expert order -> [T, H] in out_dtype."""
    T, k = weights.shape
    H = y.shape[1]
    if not use_triton:
        ys = y.index_select(0, slot_of).view(T, k, H)  # [T, k, H] back in token order
        return torch.bmm(weights.to(y.dtype).unsqueeze(1), ys).squeeze(1).to(out_dtype)  # [T, H]
    kern = _kernels()
    out = torch.empty(T, H, dtype=out_dtype, device=y.device)  # [T, H]
    if T:
        kern["combine"][(T, kern["cdiv"](H, BLOCK))](
            y, slot_of.contiguous(), weights.float().contiguous(), out, H, y.stride(0), out.stride(0), K=k, BLOCK=BLOCK
        )
    return out
