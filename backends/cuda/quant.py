"""Quantized formats on CUDA: the GEMMs of w8a8, fp8 and fp8-block as torch's fused low-precision ops run them.

The quantizers are harness.quant's (the format's rule, run on the device); this module lays the quantized
operands out as each op demands and dequantizes:
- `w8a8`: `torch._int_mm` (int8 x int8 -> int32, cuBLASLt). CUDA asks M > 16 and K, N multiples of 8: the
  operands are zero-padded up to that (M to 17 rows, K and N to the next multiple of 8; zero rows / columns add
  exact zeros to an integer dot product) and the result sliced back; the weight is passed as the transposed view
  of [N, K] (column-major, the layout cuBLASLt's int8 GEMM takes). Dequantized in float32 (acc * s_x * s_w).
- `fp8`: `torch._scaled_mm` with per-tensor float32 scales, e4m3 x e4m3, float32 accumulate (use_fast_accum off:
  Hopper's fast accumulation keeps fewer bits), scaled in the epilogue, out in bfloat16 (float32 inside the MoE).
  The second operand must be column-major (the transposed view of w [N, K]) and K, N multiples of 16: zero-padded.
- `fp8-block`: `torch._scaled_mm` blockwise (cuBLAS 12.9+, sm90: activations `BlockWise1x128`, scale_a
  [M, K/128] outer-dim-major (stride (1, M)); weights `BlockWise128x128`, scale_b the transposed view of a
  contiguous [N/128, K/128]); K and N zero-padded to multiples of 128 (a partial block keeps its own scale: the
  zeros added do not move its amax, which was taken before padding). Where this torch / cuBLAS / GPU refuses
  blockwise scaling (torch before 2.9, cuBLAS before 12.9, not sm90), the fallback is the same function as
  float32 GEMMs on the e4m3 values, one per 128-wide K group, each dequantized with its scales (exact products,
  float32 accumulate: harness.torch_quant.quant_matmul on the device), and `path` says so with torch's reason.
  Not bf16 dequantization: rounding q * s to bfloat16 would add an error the format does not have.
Weights are quantized once per weight set (kept while the tensor lives, as a port quantizes its checkpoint
offline); activations are quantized on every call. The MoE runs torch_quant's expert loop with these GEMMs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from harness import quant, torch_quant
from harness.backends.cuda.memo import TensorMemo
from harness.lazy import F, torch
from harness.op_types import Experts, QuantSpec, Routing, SharedExpert

INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA: self.size(0) > 16
INT_MM_ALIGN = 8  # K and N multiples of 8
SCALED_MM_ALIGN = 16  # torch._scaled_mm: K and N multiples of 16
BLOCK = 128  # fp8-block: cuBLAS's 1x128 / 128x128 block scaling

Matmul = Callable[..., "torch.Tensor"]  # torch._scaled_mm / torch._int_mm or a stand-in with their signature


def round_up(n: int, m: int) -> int:
    return math.ceil(n / m) * m


def pad2d(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """t [R, C] zero-padded to [rows, cols] (no copy when already that size); float8 padded through its bytes
    (0x00 is +0 in e4m3), which F.pad does not take directly."""
    R, C = t.shape
    if t.shape == (rows, cols):
        return t
    if t.dtype == torch.float8_e4m3fn:
        return F.pad(t.view(torch.uint8), (0, cols - C, 0, rows - R)).view(torch.float8_e4m3fn)
    return F.pad(t, (0, cols - C, 0, rows - R))


def int8_gemm(xq: quant.Quantized, wq: quant.Quantized, int_mm: Matmul | None = None) -> torch.Tensor:
    """w8a8: x int8 [T, K] (per-token scales [T, 1]) x w int8 [N, K] (per-channel [N, 1]) -> float32 [T, N]."""
    int_mm = int_mm or torch._int_mm
    (T, K), N = xq.q.shape, wq.q.shape[0]
    Kp = round_up(K, INT_MM_ALIGN)
    x = pad2d(xq.q, max(T, INT_MM_MIN_ROWS), Kp)  # [M', K']
    w = pad2d(wq.q, round_up(N, INT_MM_ALIGN), Kp)  # [N', K']
    acc = int_mm(x, w.t())[:T, :N]  # int32 [T, N]: exact
    return acc.float() * xq.scale * wq.scale.reshape(1, N)  # [T, N] * [T, 1] * [1, N], float32


def fp8_tensorwise_gemm(
    xq: quant.Quantized, wq: quant.Quantized, out_dtype: torch.dtype, scaled_mm: Matmul | None = None
) -> torch.Tensor:
    """fp8: e4m3 [T, K] x e4m3 [N, K], one scale each -> [T, N] in out_dtype (scaled in the epilogue)."""
    scaled_mm = scaled_mm or torch._scaled_mm
    (T, K), N = xq.q.shape, wq.q.shape[0]
    Kp = round_up(K, SCALED_MM_ALIGN)
    x = pad2d(xq.q, round_up(T, SCALED_MM_ALIGN), Kp)
    w = pad2d(wq.q, round_up(N, SCALED_MM_ALIGN), Kp)
    sa, sb = xq.scale.reshape(()), wq.scale.reshape(())  # float32 singletons
    out = scaled_mm(x, w.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype, use_fast_accum=False)
    return out[:T, :N]


def blockwise_operands(xq: quant.Quantized, wq: quant.Quantized) -> tuple[torch.Tensor, ...]:
    """fp8-block operands as torch._scaled_mm's (BlockWise1x128, BlockWise128x128) takes them:
    (a [M', K'], b [K', N'] column-major, scale_a [M', K'/128] stride (1, M'), scale_b [K'/128, N'/128] the
    transposed view of a contiguous [N'/128, K'/128]); M' = T rounded to 16, K', N' rounded to 128."""
    (T, K), N = xq.q.shape, wq.q.shape[0]
    M, Kp, Np = round_up(T, SCALED_MM_ALIGN), round_up(K, BLOCK), round_up(N, BLOCK)
    a = pad2d(xq.q, M, Kp)
    b = pad2d(wq.q, Np, Kp).t()
    sa = F.pad(xq.scale, (0, 0, 0, M - T), value=1.0)  # [M, K'/128]; padded rows are zeros whatever their scale
    scale_a = sa.t().contiguous().t()  # outer-dim-major
    scale_b = wq.scale.contiguous().t()  # [K'/128, N'/128]
    return a, b, scale_a, scale_b


class CudaQuant:
    """The quantized ops of the cuda backend: `linear` and `experts`; `path` names what the last call ran."""

    def __init__(self, scaled_mm: Matmul | None = None, int_mm: Matmul | None = None) -> None:
        self._scaled_mm = scaled_mm  # None: torch._scaled_mm (a stand-in only where that op does not run)
        self._int_mm = int_mm
        self._weights: TensorMemo[tuple[QuantSpec, quant.Quantized]] = TensorMemo()
        self.blockwise_error: str | None = None  # why torch._scaled_mm refused blockwise scales (then: fallback)
        self.path: dict[str, Any] = {}

    def quantize_weight(self, w: torch.Tensor, spec: QuantSpec) -> quant.Quantized:
        """harness.quant's weight rule, once per weight tensor and format (kept while the tensor lives)."""
        hit = self._weights.get(w)
        if hit is not None and hit[0] == spec:
            return hit[1]
        wq = quant.quantize_weight(w, spec)
        self._weights.put(w, (spec, wq))
        return wq

    def matmul(self, xq: quant.Quantized, wq: quant.Quantized, out_dtype: torch.dtype) -> torch.Tensor:
        """[T, K] x [N, K] -> [T, N] in out_dtype, the GEMM the operands' format takes."""
        if xq.q.dtype == torch.int8:
            self.path["gemm"] = "torch._int_mm (zero-padded to M > 16, K and N multiples of 8)"
            return int8_gemm(xq, wq, self._int_mm).to(out_dtype)
        if xq.scale.numel() == 1 and wq.scale.numel() == 1:  # fp8 (or a block format with one block)
            self.path["gemm"] = "torch._scaled_mm tensorwise (K, N zero-padded to multiples of 16)"
            return fp8_tensorwise_gemm(xq, wq, out_dtype, self._scaled_mm)
        return self._blockwise(xq, wq, out_dtype)

    def _blockwise(self, xq: quant.Quantized, wq: quant.Quantized, out_dtype: torch.dtype) -> torch.Tensor:
        (T, K), N = xq.q.shape, wq.q.shape[0]
        cublas_blocks = xq.group == (1, min(BLOCK, K)) and wq.group == (min(BLOCK, N), min(BLOCK, K))
        if not cublas_blocks:  # QuantSpec.block other than 128: no cuBLAS recipe
            self.path["gemm"] = f"float32 GEMM per K group on the e4m3 values (groups {xq.group} x {wq.group})"
            return torch_quant.quant_matmul(xq, wq).to(out_dtype)
        if self.blockwise_error is None:
            a, b, scale_a, scale_b = blockwise_operands(xq, wq)
            try:
                out = (self._scaled_mm or torch._scaled_mm)(
                    a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, use_fast_accum=False
                )
            except (RuntimeError, NotImplementedError, ValueError) as exc:  # this torch / cuBLAS / GPU refuses
                self.blockwise_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            else:
                self.path["gemm"] = "torch._scaled_mm blockwise (BlockWise1x128 x BlockWise128x128)"
                return out[:T, :N]
        self.path["gemm"] = "float32 GEMM per 128-wide K group on the e4m3 values (blockwise _scaled_mm refused)"
        self.path["blockwise_error"] = self.blockwise_error
        return torch_quant.quant_matmul(xq, wq).to(out_dtype)

    def linear(self, x: torch.Tensor, w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
        """x [T, K] @ w [N, K]^T in the format -> [T, N] in the dtype of x (bfloat16: the epilogue's output)."""
        self.path = {"format": spec.format}
        return self.matmul(quant.quantize_activation(x, spec), self.quantize_weight(w, spec), x.dtype)

    def experts(
        self, x: torch.Tensor, weights: Experts, routing: Routing, shared: SharedExpert | None, spec: QuantSpec
    ) -> torch.Tensor:
        """The quantized MoE: torch_quant's loop over experts (a host sync for the counts: captured graphs fall
        back to events) on these GEMMs, float32 between them as harness.quant's function has it."""
        self.path = {"format": spec.format, "moe": "loop over experts (one GEMM per expert and projection)"}
        return torch_quant.experts(
            x,
            weights,
            routing,
            shared,
            spec,
            matmul=lambda xq, wq: self.matmul(xq, wq, torch.float32),
            quantize_weight=self.quantize_weight,
        )
