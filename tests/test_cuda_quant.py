"""The cuda backend's quantized GEMMs (backends/cuda/quant.py) run here on CPU tensors: torch._int_mm and
torch._scaled_mm (tensorwise) run on the CPU in torch 2.13, so w8a8 and fp8 go through the real ops with the
padding and layout the CUDA kernels demand; blockwise _scaled_mm does not run on the CPU ("Invalid scaling
configuration"), so fp8-block's operands go to a stand-in that checks them against torch's own shape / stride
rules for (BlockWise1x128, BlockWise128x128) (ScaledBlas.cpp: is_blockwise_1x128_scaling,
is_blockwise_128x128_scaling) and computes cuBLAS's documented block-scaled product. What needs a GPU (cuBLAS's
kernels themselves) is in the prepared check, benchmarks/cuda_quant.sh."""

from __future__ import annotations

import math

import pytest
import torch

from harness import ops, quant
from harness.backends.cuda.quant import (
    INT_MM_ALIGN,
    CudaQuant,
    blockwise_operands,
    int8_gemm,
    pad2d,
)
from harness.op_types import Experts, QuantSpec, Routing

FORMATS = ("w8a8", "fp8", "fp8-block")


def _check_size_stride(scale: torch.Tensor, dim: int, size: int, stride: int) -> bool:
    """ScaledBlas.cpp's check_size_stride: the size matches, and the stride too unless the size is 1."""
    return scale.shape[dim] == size and (size == 1 or scale.stride(dim) == stride)


def blockwise_scaled_mm_cpu(a, b, *, scale_a, scale_b, out_dtype, use_fast_accum):
    """torch._scaled_mm's (BlockWise1x128, BlockWise128x128) on the CPU: refuses operands that torch's CUDA
    dispatch would not take as that recipe, then computes sum_g sa[m, g] sb[g, n // 128] (a b)_g in float32."""
    M, K = a.shape
    N = b.shape[1]
    assert a.dtype == b.dtype == torch.float8_e4m3fn and scale_a.dtype == scale_b.dtype == torch.float32
    assert b.stride(0) == 1, "mat2 must be column-major"
    assert K % 128 == 0 and N % 128 == 0 and M % 16 == 0, "dims the blockwise kernels take"
    assert _check_size_stride(scale_a, 0, M, 1) and _check_size_stride(scale_a, 1, K // 128, M), "scale_a 1x128"
    sbt = scale_b.t()  # is_blockwise_128x128_scaling(b.t(), scale_b.t())
    assert _check_size_stride(sbt, 0, N // 128, K // 128) and _check_size_stride(sbt, 1, K // 128, 1), "scale_b"
    assert not use_fast_accum
    out = torch.zeros(M, N)
    for g in range(K // 128):
        acc = a[:, g * 128 : (g + 1) * 128].float() @ b[g * 128 : (g + 1) * 128].float()  # exact e4m3 products
        out += acc * scale_a[:, g, None] * scale_b[g].repeat_interleave(128)[None, :]
    return out.to(out_dtype)


def _inputs(T: int, K: int, N: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, K, generator=g).bfloat16(), (torch.randn(N, K, generator=g) / K**0.5).bfloat16()


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def test_padding_meets_int_mm_cuda_limits_and_is_exact() -> None:
    x, w = _inputs(5, 60, 30)  # M <= 16, K and N not multiples of 8
    spec = QuantSpec("w8a8")
    xq, wq = quant.quantize_activation(x, spec), quant.quantize_weight(w, spec)
    seen = []

    def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # torch._int_mm, recording what CUDA would get
        seen.append((tuple(a.shape), tuple(b.shape), b.stride()))
        return torch._int_mm(a, b)

    out = int8_gemm(xq, wq, int_mm)
    ((a, b, stride),) = seen
    assert a[0] > 16 and a == (17, 64) and b == (64, 32) and stride == (1, 64)  # CUDA: M > 16, K, N % 8
    assert a[1] % INT_MM_ALIGN == 0 and b[1] % INT_MM_ALIGN == 0
    exact = (xq.q.double() @ wq.q.double().T) * xq.scale.double() * wq.scale.double().T
    assert torch.allclose(out.double(), exact, rtol=1e-6, atol=0)  # int32 exact; float32 dequant


def test_pad2d_pads_float8_with_zeros_and_copies_nothing_when_aligned() -> None:
    q = torch.randn(5, 7).to(torch.float8_e4m3fn)
    p = pad2d(q, 16, 16)
    assert p.dtype == torch.float8_e4m3fn and p.shape == (16, 16)
    assert (
        torch.equal(p[:5, :7].float(), q.float())
        and p.float()[5:].abs().sum() == 0
        and p.float()[:, 7:].abs().sum() == 0
    )
    aligned = torch.zeros(16, 16, dtype=torch.int8)
    assert pad2d(aligned, 16, 16) is aligned


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dims", [(32, 320, 192), (5, 60, 30), (16, 128, 128), (1, 300, 140)])
def test_linear_matches_the_emulation(fmt: str, dims: tuple[int, int, int]) -> None:
    """Partial blocks (K, N not multiples of 128), tiny M, odd K / N: the kernel against the exact emulation."""
    x, w = _inputs(*dims)
    spec = QuantSpec(fmt)
    cq = CudaQuant(scaled_mm=blockwise_scaled_mm_cpu if fmt == "fp8-block" else None)
    out = cq.linear(x, w, spec)
    emu = ops.linear(x, w, quant=spec)
    assert out.dtype == torch.bfloat16 and out.shape == emu.shape
    assert _rel(out, emu) < 4e-3  # bfloat16 output rounding only
    assert "blockwise_error" not in cq.path
    if fmt == "fp8-block" and math.ceil(dims[1] / 128) > 1:
        assert "blockwise (BlockWise1x128" in cq.path["gemm"]


def test_blockwise_scales_are_laid_out_as_cublas_reads_them() -> None:
    x, w = _inputs(20, 300, 140)
    spec = QuantSpec("fp8-block")
    xq, wq = quant.quantize_activation(x, spec), quant.quantize_weight(w, spec)
    a, b, scale_a, scale_b = blockwise_operands(xq, wq)
    assert a.shape == (32, 384) and b.shape == (384, 256) and b.stride() == (1, 384)
    assert scale_a.shape == (32, 3) and scale_a.stride() == (1, 32)  # outer-dim-major
    assert scale_b.shape == (3, 2) and scale_b.t().is_contiguous()  # transposed view of [N/128, K/128]
    assert torch.equal(scale_a[:20], xq.scale) and torch.equal(scale_b.t(), wq.scale)


def test_a_refused_blockwise_op_falls_back_to_the_same_function_and_says_why() -> None:
    x, w = _inputs(32, 320, 192)
    spec = QuantSpec("fp8-block")
    cq = CudaQuant()  # torch._scaled_mm itself: the CPU build refuses blockwise scales
    out = cq.linear(x, w, spec)
    assert "Invalid scaling configuration" in cq.path["blockwise_error"]
    assert cq.path["gemm"].startswith("float32 GEMM per 128-wide K group")
    assert _rel(out, ops.linear(x, w, quant=spec)) < 4e-3


def test_weights_are_quantized_once_per_weight_set() -> None:
    _, w = _inputs(32, 128, 64)
    cq = CudaQuant()
    spec = QuantSpec("w8a8")
    first = cq.quantize_weight(w, spec)
    assert cq.quantize_weight(w, spec) is first
    w.mul_(2.0)  # written in place: quantized again
    assert cq.quantize_weight(w, spec) is not first
    assert cq.quantize_weight(w, QuantSpec("fp8")).q.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("fmt", FORMATS)
def test_experts_match_the_emulation(fmt: str) -> None:
    g = torch.Generator().manual_seed(1)
    T, H, Fd, E, k = 24, 256, 160, 4, 2
    x = torch.randn(T, H, generator=g).bfloat16()
    ex = Experts(*(torch.randn(E, *s, generator=g).bfloat16() / s[1] ** 0.5 for s in ((Fd, H), (Fd, H), (H, Fd))))
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
    routing = Routing(torch.rand(T, k, generator=g).softmax(-1), ids)
    spec = QuantSpec(fmt)
    cq = CudaQuant(scaled_mm=blockwise_scaled_mm_cpu if fmt == "fp8-block" else None)
    out = cq.experts(x, ex, routing, None, spec)
    emu = quant.emulated_experts(x, ex, routing, None, spec)
    assert out.dtype == torch.bfloat16 and _rel(out, emu) < 6e-3
    assert cq.path["moe"].startswith("loop over experts")
