"""Planted faults of the quantized formats (ops `linear` and `moe`, harness/quant.py): the mistakes a W8A8 / FP8
port makes. Each is torch-cpu's quantized GEMM with one mistake, in the projection and in every GEMM of the
quantized MoE (experts and shared expert, the activation quantizations through the same hook);
`bug-quant-k-chunks` is a correct one that sums K in other chunks (a different accumulation order), which must
pass."""

from __future__ import annotations

from typing import ClassVar

from harness import quant, torch_quant
from harness.backends.torch_cpu import TorchCpu
from harness.lazy import F, torch


class _QuantLinearFault(TorchCpu):
    """torch-cpu's quantized linear with `fault` hooks; unquantized cases run unchanged."""

    def quantize_x(self, x, spec):  # type: ignore[no-untyped-def]
        return quant.quantize_activation(x, spec)

    def gemm(self, xq, wq):  # type: ignore[no-untyped-def]
        return torch_quant.quant_matmul(xq, wq)

    def linear(self, x, w, *, quant=None):  # type: ignore[no-untyped-def,override]
        if quant is None:
            return super().linear(x, w)
        return self.gemm(self.quantize_x(x, quant), _quant_weight(w, quant)).to(x.dtype)

    def quant_experts(self, x, experts, routing, shared, quant):  # type: ignore[no-untyped-def,override]
        """torch_quant.experts' computation with every activation quantization and GEMM through the hooks."""
        T, H = x.shape
        ids, combine = routing.ids.long(), routing.weights.float()  # [T, k]
        k = ids.shape[1]
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)  # slots grouped by expert
        token, sorted_ids = order // k, flat[order]
        wg, wu, wd = (_quant_weight(t, quant) for t in experts.tensors())
        xq = self.quantize_x(x, quant)
        segments = [(e, (sorted_ids == e).nonzero(as_tuple=True)[0]) for e in torch.unique(flat).tolist()]
        h = torch.zeros(T * k, wg.q.shape[-2])  # [T*k, F] float32
        for e, seg in segments:
            xe = xq.rows(token[seg])
            h[seg] = F.silu(self.gemm(xe, _expert(wg, e))) * self.gemm(xe, _expert(wu, e))
        hq = self.quantize_x(h, quant)
        out = torch.zeros(T, H)
        for e, seg in segments:
            y = self.gemm(hq.rows(seg), _expert(wd, e))  # [n_e, H]
            out.index_add_(0, token[seg], y * combine.reshape(-1)[order[seg], None])
        if shared is not None:
            sg, su, sd = (_quant_weight(t, quant) for t in shared.tensors()[:3])
            s = F.silu(self.gemm(xq, sg)) * self.gemm(xq, su)  # [T, Fs]
            y = self.gemm(self.quantize_x(s, quant), sd)
            out += y * torch.sigmoid(x.float() @ shared.gate.float().T) if shared.gate is not None else y
        return out.to(x.dtype)


def _quant_weight(w, spec):  # type: ignore[no-untyped-def]
    return quant.quantize_weight(w, spec)


def _expert(wq, e):  # type: ignore[no-untyped-def]
    return quant.Quantized(wq.q[e], wq.scale[e], wq.group)


class PerTensorActivation(_QuantLinearFault):
    """One activation scale for the whole tensor where the format says per token (w8a8): outlier tokens
    flatten every other token's resolution."""

    name: ClassVar[str] = "bug-quant-per-tensor-act"

    def quantize_x(self, x, spec):  # type: ignore[no-untyped-def]
        return quant.quantize(x, "int8", tuple(x.shape))  # the bug: (T, K) group, not (1, K)


class ScaleTwice(_QuantLinearFault):
    """The activation scale multiplied in twice on dequantization."""

    name: ClassVar[str] = "bug-quant-scale-twice"

    def gemm(self, xq, wq):  # type: ignore[no-untyped-def]
        return torch_quant.quant_matmul(xq, wq) * xq.scale[:, :1]  # the bug


class Truncation(_QuantLinearFault):
    """x / scale truncated toward zero instead of rounded half to even."""

    name: ClassVar[str] = "bug-quant-truncate"

    def quantize_x(self, x, spec):  # type: ignore[no-untyped-def]
        good = quant.quantize_activation(x, spec)
        scaled = x.float() / good.full_scale()
        if good.q.dtype == torch.int8:
            q = torch.trunc(scaled).clamp(-127, 127).to(torch.int8)  # the bug
        else:  # e4m3: drop the mantissa bits below e4m3's 3 instead of rounding them
            bits = scaled.view(torch.int32) & ~((1 << 20) - 1)  # the bug: float32 mantissa cut to 3 bits
            q = bits.view(torch.float32).clamp(-448, 448).to(torch.float8_e4m3fn)
        return quant.Quantized(q, good.scale, good.group)


class Int16Accumulator(_QuantLinearFault):
    """int8 products accumulated in int16 (wrapping), where the format says int32."""

    name: ClassVar[str] = "bug-quant-int16-acc"

    def gemm(self, xq, wq):  # type: ignore[no-untyped-def]
        if xq.q.dtype != torch.int8:
            return super().gemm(xq, wq)
        prod = xq.q.to(torch.int16)[:, None, :] * wq.q.to(torch.int16)[None, :, :]  # [T, N, K]
        acc = torch.zeros(prod.shape[:2], dtype=torch.int16)
        for k in range(prod.shape[-1]):
            acc += prod[..., k]  # the bug: wraps past 32767
        return acc.float() * xq.scale * wq.scale.reshape(1, -1)


class NoSaturation(_QuantLinearFault):
    """e4m3 cast without the clamp to +-448, a value past it becoming NaN as a non-saturating cast makes it.
    Even with dynamic amax scales it shows: x / (amax / 448) computed in float32 lands just past 448 for
    some group maxima, and a non-saturating cast makes that NaN (caught as `nonfinite`)."""

    name: ClassVar[str] = "bug-quant-no-saturation"

    def quantize_x(self, x, spec):  # type: ignore[no-untyped-def]
        good = quant.quantize_activation(x, spec)
        if good.q.dtype == torch.int8:
            return good
        scaled = x.float() / good.full_scale()
        scaled = torch.where(scaled.abs() > 448, torch.nan, scaled)  # the bug: no saturation
        return quant.Quantized(scaled.to(torch.float8_e4m3fn), good.scale, good.group)


class KChunks(_QuantLinearFault):
    """Correct, in another order: K summed in chunks of 64, the chunks' float32 partial sums added up."""

    name: ClassVar[str] = "bug-quant-k-chunks"

    def gemm(self, xq, wq):  # type: ignore[no-untyped-def]
        K, out = xq.q.shape[-1], None
        step = quant.k_groups(xq, wq)
        for start in range(0, K, step):  # per scale group, then 64-wide chunks inside it
            acc = sum(
                xq.q[:, s : s + 64].float() @ wq.q[:, s : s + 64].float().T
                for s in range(start, min(start + step, K), 64)
            )
            i = start // step
            sx = xq.scale[:, min(i, xq.scale.shape[1] - 1), None]
            sw = (
                wq.scale.repeat_interleave(wq.group[0], 0)[: wq.q.shape[0]] if wq.group[0] < wq.q.shape[0] else wq.scale
            )
            term = acc * sx * sw[:, min(i, sw.shape[1] - 1)][None, :]
            out = term if out is None else out + term
        return out


class FormatSkipped(TorchCpu):
    """The quantized case run unquantized: the plain GEMM in the carrier dtype (bfloat16), as a port does that
    takes the quantized path's flag but calls the float kernel. Its error against the emulation is the format's
    own (about 1% for w8a8, inside the bfloat16 budget): only `format_error.not_quantized` catches it."""

    name: ClassVar[str] = "bug-quant-skipped"

    def linear(self, x, w, *, quant=None):  # type: ignore[no-untyped-def,override]
        return super().linear(x, w)

    def quant_experts(self, x, experts, routing, shared, quant):  # type: ignore[no-untyped-def,override]
        return self.experts(x, experts, routing, shared)
