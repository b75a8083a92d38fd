"""Quantized formats: the quantizers and the float64 emulation of exactly the quantized computation.

A format (harness.names.QUANT_FORMATS) fixes every rounding, so the emulation is the kernel's function, not an
approximation of it; the unquantized float64 function (harness.ops without `quant`) is reported beside it.

- `w8a8`: int8 weights per output channel, int8 activations per token (dynamic), symmetric: scale = amax / 127
  in float32, q = round-half-to-even(x / scale) clamped to [-127, 127] (symmetric: -128 is never produced by an
  amax scale, and a symmetric range keeps -q representable, as npu_dynamic_quant and vLLM's int8 path do).
  Products exact (int32 accumulate: never overflows for K < 133k; the emulation sums in float64, exact for
  integers), dequantized acc * s_x * s_w, output bfloat16.
- `fp8`: float8_e4m3fn weights and activations, one scale per tensor (per expert for MoE weights): scale =
  amax / 448 in float32, x / scale clamped to [-448, 448] (explicit saturation: an e4m3 cast without it gives
  NaN past 448 on hardware), cast round-to-nearest-even. Products of e4m3 values are exact in float64 and so
  are the sums to float64 rounding; float32 accumulate in the kernel; output bfloat16.
- `fp8-block`: as fp8, with one scale per 128 x 128 weight block and per 1 x 128 activation group along K
  (DeepSeek-V3's recipe, torch._scaled_mm blockwise): out = sum_g s_x[t, g] s_w[n // 128, g] (q_x q_w^T)_g;
  the last block of a dim not a multiple of 128 is partial.
A zero amax gives scale 1 (all zeros quantize to zero). Quantization always runs on the float32 value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.lazy import torch
from harness.op_types import Experts, QuantSpec, Routing, SharedExpert

INT8_MAX = 127.0
E4M3_MAX = 448.0


@dataclass(frozen=True)
class Quantized:
    """A tensor [..., R, C] quantized in groups of (gr, gc): values q (int8 or float8_e4m3fn) and float32
    scales [..., ceil(R / gr), ceil(C / gc)]; x ~= q * scale of its group."""

    q: torch.Tensor
    scale: torch.Tensor
    group: tuple[int, int]

    def rows(self, index: torch.Tensor) -> Quantized:
        """The rows `index` of a 2-D quantized tensor (their scales with them where scales are per row)."""
        scale = self.scale[index] if self.group[0] == 1 else self.scale
        return Quantized(self.q[index], scale, self.group)

    def full_scale(self) -> torch.Tensor:
        """The scale of every element, [..., R, C] float32."""
        R, C = self.q.shape[-2:]
        gr, gc = self.group
        return self.scale.repeat_interleave(gr, -2).repeat_interleave(gc, -1)[..., :R, :C]

    def dequantize(self) -> torch.Tensor:
        return self.q.double() * self.full_scale().double()


def _group_amax(x: torch.Tensor, gr: int, gc: int) -> torch.Tensor:
    """max |x| over (gr, gc) groups of the last two dims: [..., ceil(R/gr), ceil(C/gc)] (zero-padded edges)."""
    R, C = x.shape[-2:]
    nr, nc = math.ceil(R / gr), math.ceil(C / gc)
    padded = torch.nn.functional.pad(x.abs(), (0, nc * gc - C, 0, nr * gr - R))
    return padded.reshape(*x.shape[:-2], nr, gr, nc, gc).amax(dim=(-3, -1))


def quantize(x: torch.Tensor, kind: str, group: tuple[int, int], scale: torch.Tensor | None = None) -> Quantized:
    """x [..., R, C] -> Quantized, kind "int8" or "e4m3", dynamic amax scales unless `scale` is given (static,
    as a calibrated activation scale would be: then saturation decides what values past the range become)."""
    x32 = x.float()
    R, C = x32.shape[-2:]
    gr, gc = min(group[0], R), min(group[1], C)
    qmax = INT8_MAX if kind == "int8" else E4M3_MAX
    if scale is None:
        amax = _group_amax(x32, gr, gc)
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # float32
    full = Quantized(x32, scale, (gr, gc)).full_scale()
    scaled = (x32 / full).clamp(-qmax, qmax)
    q = torch.round(scaled).to(torch.int8) if kind == "int8" else scaled.to(torch.float8_e4m3fn)
    return Quantized(q, scale, (gr, gc))


def quantize_weight(w: torch.Tensor, spec: QuantSpec) -> Quantized:
    """Weights [..., N, K] (nn.Linear layout, experts batched in front) in the format's weight granularity."""
    N, K = w.shape[-2:]
    if spec.format == "w8a8":
        return quantize(w, "int8", (1, K))  # per output channel
    if spec.format == "fp8":
        return quantize(w, "e4m3", (N, K))  # per tensor (per expert)
    return quantize(w, "e4m3", (spec.block, spec.block))


def quantize_activation(x: torch.Tensor, spec: QuantSpec) -> Quantized:
    """Activations [T, K] in the format's activation granularity (dynamic)."""
    T, K = x.shape
    if spec.format == "w8a8":
        return quantize(x, "int8", (1, K))  # per token
    if spec.format == "fp8":
        return quantize(x, "e4m3", (T, K))  # per tensor
    return quantize(x, "e4m3", (1, spec.block))


def k_groups(xq: Quantized, wq: Quantized) -> int:
    """The K extent one scale pair covers: K for per-token / per-channel / per-tensor, the block otherwise."""
    K = xq.q.shape[-1]
    return min(xq.group[1], wq.group[1], K)


def emulated_matmul(xq: Quantized, wq: Quantized) -> torch.Tensor:
    """Exactly the quantized GEMM in float64: x [T, K], w [N, K] -> [T, N]; products exact, each K group's
    sum dequantized with its scales, groups summed (one group unless blockwise)."""
    K = xq.q.shape[-1]
    g = k_groups(xq, wq)
    x, w = xq.q.double(), wq.q.double()  # [T, K], [N, K]: exact (int8 / e4m3 values)
    sx, sw = xq.scale.double(), wq.scale.double()  # [T|1, G|1], [N/gr|1, G|1]
    sw = sw.repeat_interleave(wq.group[0], 0)[: w.shape[0]] if wq.group[0] < w.shape[0] else sw  # [N|1, G|1]
    out = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    for i, start in enumerate(range(0, K, g)):
        acc = x[:, start : start + g] @ w[:, start : start + g].T  # [T, N]
        out += acc * sx[:, min(i, sx.shape[1] - 1), None] * sw[:, min(i, sw.shape[1] - 1)][None, :]
    return out


def emulated_linear(x: torch.Tensor, w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The float64 emulation of a quantized projection x [T, K] @ w [N, K]^T -> [T, N]."""
    return emulated_matmul(quantize_activation(x, spec), quantize_weight(w, spec))


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return gate * torch.sigmoid(gate) * up


def emulated_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, spec: QuantSpec):
    """A quantized SwiGLU MLP (the shared expert) in float64: [T, H] -> [T, H]."""
    xq = quantize_activation(x, spec)
    h = _silu_mul(emulated_matmul(xq, quantize_weight(w_gate, spec)), emulated_matmul(xq, quantize_weight(w_up, spec)))
    return emulated_matmul(quantize_activation(h, spec), quantize_weight(w_down, spec))


def emulated_experts(
    x: torch.Tensor, weights: Experts, routing: Routing, shared: SharedExpert | None, spec: QuantSpec
) -> torch.Tensor:
    """The quantized MoE after routing, in float64: x quantized once (per token / per tensor / per group), each
    expert's gate and up GEMMs on its tokens, SwiGLU, the [T*k, F] intermediate quantized as one tensor, the
    down GEMM, the combine with the routing weights; the shared expert quantized the same way: [T, H]."""
    x = x.detach().cpu()
    T, H = x.shape
    ids = routing.ids.detach().cpu().long()  # [T, k]
    combine = routing.weights.detach().cpu().double()  # [T, k]
    k = ids.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # slots grouped by expert
    token = order // k  # [T*k]
    wg, wu, wd = (quantize_weight(t.detach().cpu(), spec) for t in weights.tensors())
    xq = quantize_activation(x, spec)
    h = torch.zeros(T * k, wg.q.shape[-2], dtype=torch.float64)  # [T*k, F]
    experts = flat[order]
    for e in torch.unique(experts).tolist():
        seg = (experts == e).nonzero(as_tuple=True)[0]
        xe = xq.rows(token[seg])
        gate = emulated_matmul(xe, _expert(wg, e))
        h[seg] = _silu_mul(gate, emulated_matmul(xe, _expert(wu, e)))
    hq = quantize_activation(h, spec)
    out = torch.zeros(T, H, dtype=torch.float64)
    for e in torch.unique(experts).tolist():
        seg = (experts == e).nonzero(as_tuple=True)[0]
        y = emulated_matmul(hq.rows(seg), _expert(wd, e))  # [n_e, H]
        out.index_add_(0, token[seg], y * combine.reshape(-1)[order[seg], None])
    if shared is not None:
        s = shared.map(lambda t: t.detach().cpu())
        y = emulated_mlp(x, s.w_gate, s.w_up, s.w_down, spec)
        if s.gate is not None:
            y = y * torch.sigmoid(x.double() @ s.gate.double().T)  # [T, 1]: the gate stays unquantized
        out = out + y
    return out


def _expert(wq: Quantized, e: int) -> Quantized:
    return Quantized(wq.q[e], wq.scale[e], wq.group)
