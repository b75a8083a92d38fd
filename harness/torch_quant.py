"""The quantized formats as torch kernels compute them (torch-cpu, and the base of device backends): activations
quantized on the fly, int8 GEMMs through torch._int_mm (int32 accumulate), e4m3 GEMMs on the e4m3 values with
float32 accumulate, dequantization in float32, bfloat16 out. The quantizers are harness.quant's (the format's
rule, in float32, as a port implements it); the GEMMs, the accumulation and the dequantization are this module's.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import quant
from harness.lazy import F, torch
from harness.op_types import Experts, QuantSpec, Routing, SharedExpert

QuantMatmul = Callable[[quant.Quantized, quant.Quantized], "torch.Tensor"]  # [T, K] x [N, K] -> float32 [T, N]


def _int8_dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """int8 [T, K] x int8 [N, K]^T -> int32 [T, N] (torch._int_mm, else an exact float64 sum)."""
    try:
        return torch._int_mm(x, w.T.contiguous())
    except RuntimeError:  # a shape or device _int_mm refuses
        return (x.double() @ w.double().T).to(torch.int32)


def quant_matmul(xq: quant.Quantized, wq: quant.Quantized) -> torch.Tensor:
    """The quantized GEMM [T, K] x [N, K] -> float32 [T, N], accumulated per K group, dequantized in float32."""
    K = xq.q.shape[-1]
    g = quant.k_groups(xq, wq)
    sx = xq.scale  # [T|1, G|1]
    sw = wq.scale.repeat_interleave(wq.group[0], 0)[: wq.q.shape[0]] if wq.group[0] < wq.q.shape[0] else wq.scale
    out = torch.zeros(xq.q.shape[0], wq.q.shape[0], dtype=torch.float32, device=xq.q.device)
    for i, start in enumerate(range(0, K, g)):
        xs, ws = xq.q[:, start : start + g], wq.q[:, start : start + g]
        acc = _int8_dot(xs, ws).float() if xs.dtype == torch.int8 else xs.float() @ ws.float().T  # [T, N]
        out += acc * sx[:, min(i, sx.shape[1] - 1), None] * sw[:, min(i, sw.shape[1] - 1)][None, :]
    return out


def linear(x: torch.Tensor, w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return quant_matmul(quant.quantize_activation(x, spec), quant.quantize_weight(w, spec)).to(x.dtype)


def _mlp(
    xq: quant.Quantized,
    wg: quant.Quantized,
    wu: quant.Quantized,
    wd: quant.Quantized,
    spec: QuantSpec,
    matmul: QuantMatmul = quant_matmul,
) -> torch.Tensor:
    h = F.silu(matmul(xq, wg)) * matmul(xq, wu)  # [n, F] float32
    return matmul(quant.quantize_activation(h, spec), wd)


def experts(
    x: torch.Tensor,
    weights: Experts,
    routing: Routing,
    shared: SharedExpert | None,
    spec: QuantSpec,
    matmul: QuantMatmul = quant_matmul,
    quantize_weight: Callable[[torch.Tensor, QuantSpec], quant.Quantized] = quant.quantize_weight,
) -> torch.Tensor:
    """The quantized MoE after routing, slots sorted by expert: [T, H] in the dtype of x. `matmul` and
    `quantize_weight` are a device backend's GEMM and its (cached) weight quantization; the steps are these."""
    T, H = x.shape
    ids, combine = routing.ids.long(), routing.weights.float()
    k = ids.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // k
    counts = torch.bincount(flat, minlength=weights.w_gate.shape[0]).tolist()
    wg, wu, wd = (quantize_weight(t, spec) for t in weights.tensors())
    xq = quant.quantize_activation(x, spec)
    h = torch.empty(T * k, wg.q.shape[-2], dtype=torch.float32, device=x.device)
    start = 0
    for e, n in enumerate(counts):
        if n:
            xe = xq.rows(token[start : start + n])
            ge, ue = (quant.Quantized(w.q[e], w.scale[e], w.group) for w in (wg, wu))
            h[start : start + n] = F.silu(matmul(xe, ge)) * matmul(xe, ue)
            start += n
    hq = quant.quantize_activation(h, spec)
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    start = 0
    for e, n in enumerate(counts):
        if n:
            seg = torch.arange(start, start + n, device=x.device)
            y = matmul(hq.rows(seg), quant.Quantized(wd.q[e], wd.scale[e], wd.group))
            out.index_add_(0, token[seg], y * combine.reshape(-1)[order[seg], None])
            start += n
    if shared is not None:
        sg, su, sd = (quantize_weight(t, spec) for t in shared.tensors()[:3])
        y = _mlp(xq, sg, su, sd, spec, matmul)
        if shared.gate is not None:
            y = y * torch.sigmoid(x.float() @ shared.gate.float().T)
        out += y
    return out.to(x.dtype)
