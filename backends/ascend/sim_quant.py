"""The W8A8 quantized ops of the simulated torch_npu: npu_dynamic_quant, npu_quant_matmul, npu_trans_quant_param,
the quantized MoE form of npu_grouped_matmul and npu_dequant_swiglu_quant (A2 / A3 semantics).

Kept apart from sim.py (which must not grow); sim.py re-exports these names and hands every int8 call of
npu_grouped_matmul here. Sources and what is UNVERIFIED: docs/ascend.md "Quantized ops (W8A8)". In short:
- npu_dynamic_quant follows the A2 kernel (cann-ops dynamic_quant.h): in float32, inv = 127 / rowmax|x|,
  y = rint(x * inv) (round half to EVEN, CAST_RINT), scale = 1 / inv (what the doc writes as rowmax / 127).
- the matmuls accumulate int8 x int8 exactly in int32 (|sum| <= 65535 * 128 * 128 < 2^31 under the documented
  K <= 65535 limit); this module computes the integer sum exactly (int64 on the host) and refuses a result
  outside int32 (the NPU's behaviour on overflow, possible only with an int32 bias, is not documented).
- the dequant epilogue follows the per-token kernel (quant_batch_matmul_v3_pertoken.h): float32(acc) * scale,
  then * pertoken_scale, then + a float bias, each rounded to float32, then one rounding (RNE) to the output.
A documented-invalid call raises QuantArgumentError with the rule's words (the real op raises a RuntimeError);
what the docs leave open raises NotImplementedError naming it, instead of being guessed.
"""

from __future__ import annotations

from typing import Any

from harness.lazy import torch

# What sim.py re-exports as the simulated torch_npu's own names.
__all__ = ["npu_dequant_swiglu_quant", "npu_dynamic_quant", "npu_quant_matmul", "npu_trans_quant_param"]

INT8_MAX = 127.0
MAX_INNER = 65535  # npu_quant_matmul: the last dims of x1 and x2 may not exceed 65535
GMM_INNER_LIMIT = 65536  # npu_grouped_matmul: each last dim must be below InnerLimit
DSQ_MAX_H = 10496  # npu_dequant_swiglu_quant with group_index: H <= 10496 and 64-aligned
FP19_MASK = 0xFFFFE000  # npu_trans_quant_param keeps the high 19 bits of the float32 scale
DEQ_FLAG = 1 << 46
OFFSET_SHIFT = 37
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2", "hifloat8")


class QuantArgumentError(ValueError):
    """A call a quantized op's API page documents as invalid (the real op raises a RuntimeError)."""


def _require(ok: bool, op: str, message: str) -> None:
    if not ok:
        raise QuantArgumentError(f"{op}: {message}")


def _rows_quant(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 quantization of float32 rows [R, H] as the A2 kernel does it -> (int8 [R, H],
    float32 scale [R]). A row of zeros gives y 0 and scale 0 (UNVERIFIED: the vendor golden writes scale 1)."""
    amax = xf.abs().amax(dim=-1, keepdim=True)  # [R, 1] float32
    inv = torch.tensor(INT8_MAX, dtype=torch.float32) / amax  # float32 division, inf on a zero row
    scaled = torch.where(amax > 0, xf * inv, torch.zeros_like(xf))  # one float32 rounding
    y = torch.round(scaled).clamp(-128, 127).to(torch.int8)  # torch.round: half to even (CAST_RINT)
    return y, (1.0 / inv).squeeze(-1)


def npu_dynamic_quant(
    x: torch.Tensor,
    *,
    smooth_scales: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    dst_type: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y int8 shaped like x, scale float32 shaped x.shape[:-1]): per-token symmetric dynamic quantization,
    optionally of x * smooth_scales (one row of smooth scales per group_index group in the MoE form)."""
    op = "npu_dynamic_quant"
    _require(x.dtype in (torch.float16, torch.bfloat16), op, f"x must be float16 or bfloat16, got {x.dtype}")
    _require(x.dim() > 1, op, "the dimension of x must be greater than 1")
    if dst_type is not None and str(dst_type).removeprefix("torch.") in FP8_DTYPES:
        raise QuantArgumentError(
            f"{op}: dst_type {dst_type} is not supported on Atlas A2/A3 (int8, quint4x2); FP8/HiFloat8 outputs "
            "are Ascend 950 only"
        )
    if dst_type == torch.quint4x2:
        raise NotImplementedError(f"{op}: dst_type quint4x2 (int4 packed in int32) is not modelled")
    _require(dst_type in (None, torch.int8), op, f"dst_type must be int8 or quint4x2, got {dst_type}")
    H = x.shape[-1]
    xf = x.reshape(-1, H).to(torch.float32)  # [R, H]
    if group_index is not None:
        _require(smooth_scales is not None, op, "group_index is used only with smooth_scales (MoE)")
    if smooth_scales is not None:
        _require(smooth_scales.dtype == x.dtype, op, "smooth_scales must have x's dtype")
        s = smooth_scales.to(torch.float32)
        if group_index is None:
            _require(s.shape == (H,), op, f"smooth_scales must be 1-D with x's last dim {H}, got {tuple(s.shape)}")
            xf = xf * s
        else:
            G = s.shape[0]
            _require(s.dim() == 2 and s.shape[1] == H, op, "with group_index smooth_scales must be 2-D [G, H]")
            _require(group_index.dtype == torch.int32, op, "group_index must be int32")
            _require(group_index.shape == (G,), op, "group_index must be 1-D with smooth_scales' first dim")
            ends = group_index.to(torch.int64)
            _require(bool((ends[1:] >= ends[:-1]).all()), op, "group_index must be monotonically increasing")
            _require(int(ends[-1]) == xf.shape[0], op, "group_index's last value must equal the number of rows")
            rows = torch.repeat_interleave(torch.arange(G), torch.diff(ends, prepend=ends.new_zeros(1)))
            xf = xf * s[rows]
    y, scale = _rows_quant(xf)
    return y.view(x.shape), scale.view(x.shape[:-1])


def npu_trans_quant_param(scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int = 0) -> torch.Tensor:
    """float32 scale (and offset) -> the int64 "deq scale": the scale's float32 bits truncated to FP19
    (& 0xFFFFE000) in bits 0-31, bit 46 set, the offset rounded and clamped to [-256, 255] in bits 37-45."""
    op = "npu_trans_quant_param"
    _require(scale.dtype == torch.float32, op, "scale must be float32")
    _require(scale.dim() in (1, 2), op, "scale must be 1-D or 2-D")
    if round_mode == 1:
        raise NotImplementedError(f"{op}: round_mode 1 (R_INT rounding to FP19) is not modelled")
    _require(round_mode == 0, op, "round_mode must be 0 or 1")
    bits = scale.contiguous().view(torch.int32).to(torch.int64) & FP19_MASK  # low 32 bits, no sign extension
    out = bits | DEQ_FLAG
    if offset is not None:
        _require(offset.dtype == torch.float32, op, "offset must be float32")
        off = torch.round(offset).clamp(-256, 255).to(torch.int64)  # UNVERIFIED: Round's tie rule
        out = (out & 0x4000FFFFFFFF) | ((off & 0x1FF) << OFFSET_SHIFT)
    return out


def _decode_deq_scale(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int64 deq scale -> (float32 FP19 scale, float32 offset) as npu_trans_quant_param packed them."""
    low = packed & FP19_MASK
    as_int32 = torch.where(low > INT32_MAX, low - 2**32, low).to(torch.int32)
    off = (packed >> OFFSET_SHIFT) & 0x1FF
    off = torch.where(off > 255, off - 512, off)
    return as_int32.view(torch.float32), off.to(torch.float32)


def _exact_int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 @ int8 -> the exact sum as int64 (float64 products and partial sums of int8 values are exact:
    every partial sum is an integer far below 2^53). Broadcasts batch dims like torch.matmul."""
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)


def _int32_checked(acc: torch.Tensor, op: str) -> torch.Tensor:
    """The int32 accumulator: a sum outside int32 is refused, not wrapped (the NPU's overflow is undocumented)."""
    if acc.numel() and (int(acc.min()) < INT32_MIN or int(acc.max()) > INT32_MAX):
        raise NotImplementedError(f"{op}: the int32 accumulator overflows; the NPU's wrap or saturation is unmodelled")
    return acc


# The dtype combinations of table 2 (Atlas A2 / A3) for int8 inputs: (scale dtypes, offset, bias, pertoken, out).
_QMM_TABLE: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], str], ...] = (
    (("int64", "float32"), ("None",), ("int32", "None"), ("None",), "float16"),
    (("int64", "float32"), ("float32", "None"), ("int32", "None"), ("None",), "int8"),
    (("float32", "bfloat16"), ("None",), ("int32", "bfloat16", "float32", "None"), ("float32", "None"), "bfloat16"),
    (("float32",), ("None",), ("int32", "bfloat16", "float32", "None"), ("float32",), "float16"),
    (("float32", "bfloat16"), ("None",), ("int32", "None"), ("None",), "int32"),
)


def _name(t: torch.Tensor | torch.dtype | None) -> str:
    if t is None:
        return "None"
    dtype = t.dtype if isinstance(t, torch.Tensor) else t
    return str(dtype).removeprefix("torch.")


def npu_quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
    pertoken_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    output_dtype: torch.dtype | None = None,
    group_sizes: list[int] | None = None,
) -> torch.Tensor:
    """x1 int8 [..., m, k] @ x2 int8 [..., k, n] (a (k, n) tensor or the transposed view of an (n, k) one):
    exact int32 sums (+ an int32 bias), then float32(acc) * scale[n] (* pertoken_scale[m]) (+ a float bias),
    rounded once to output_dtype (default int8)."""
    op = "npu_quant_matmul"
    if torch.int32 in (x1.dtype, x2.dtype):
        raise NotImplementedError(f"{op}: int4 inputs packed in int32 are not modelled")
    _require(x1.dtype == torch.int8 and x2.dtype == torch.int8, op, "x1 and x2 must both be int8 (or both int32)")
    _require(2 <= x1.dim() <= 6 and 2 <= x2.dim() <= 6, op, "x1 and x2 must have 2 to 6 dims")
    m, k = x1.shape[-2:]
    n = x2.shape[-1]
    _require(x2.shape[-2] == k, op, f"x2 must be (k, n) with k = {k} (x1's last dim), got {tuple(x2.shape)}")
    _require(k <= MAX_INNER and n <= MAX_INNER, op, "the last dims of x1 and x2 may not exceed 65535")
    combo = (_name(scale), _name(offset), _name(bias), _name(pertoken_scale), _name(output_dtype or torch.int8))
    supported = any(
        combo[0] in s and combo[1] in o and combo[2] in b and combo[3] in p and combo[4] == out
        for s, o, b, p, out in _QMM_TABLE
    )
    _require(supported, op, f"(scale, offset, bias, pertoken_scale, output_dtype) = {combo} is not in the A2/A3 table")
    _require(scale.dim() == 1 and scale.shape[0] in (1, n), op, f"scale must be 1-D (1,) or (n,) with n = {n}")
    if pertoken_scale is not None:
        _require(pertoken_scale.shape == (m,), op, f"pertoken_scale must be 1-D (m,) with m = {m}")
    if offset is not None:
        _require(offset.dim() == 1 and offset.shape[0] in (1, n), op, "offset must be 1-D (1,) or (n,)")
    if group_sizes is not None:
        raise NotImplementedError(f"{op}: group_sizes (per-group quantization) is not modelled")
    out_dtype = output_dtype or torch.int8
    if out_dtype in (torch.int8, torch.int32):
        raise NotImplementedError(f"{op}: output_dtype {out_dtype}: its rounding / saturation is not documented")
    acc = _exact_int_matmul(x1, x2)  # [..., m, n] int64
    if bias is not None:
        batch = acc.shape[:-2]
        ok = bias.shape == (n,) or (acc.dim() == 3 and bias.shape == (batch[0], 1, n))
        _require(ok, op, "bias must be (n,), or (batch, 1, n) for a 3-D output")
        if bias.dtype == torch.int32:
            acc = acc + bias.to(torch.int64)  # added to the int32 accumulator in the cube
    acc = _int32_checked(acc, op)
    s = _decode_deq_scale(scale)[0] if scale.dtype == torch.int64 else scale.to(torch.float32)
    y = acc.to(torch.float32) * s  # float32(acc) rounds once past 2^24, then one rounding per step
    if pertoken_scale is not None:
        y = y * pertoken_scale[:, None]
    if bias is not None and bias.dtype != torch.int32:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)


def grouped_matmul_quant(call: dict[str, Any]) -> list[torch.Tensor]:
    """npu_grouped_matmul with int8 x and weight (`call`: sim.npu_grouped_matmul's arguments, as passed), MoE
    form (x = [h int8 [M, K]], weight = [w int8 [E, K, N]], group_type 0, split_item 2/3): output_dtype int32
    gives the exact sums (no scale); otherwise scale = [[E, N]] (bfloat16 -> bfloat16 output, float32 ->
    float16) and optionally per_token_scale = [[M]] float32, computed as npu_quant_matmul's epilogue. Rows
    past the group total are garbage (NaN, or int32 min for int32 output)."""
    x, weight, group_list, output_dtype = call["x"], call["weight"], call["group_list"], call["output_dtype"]
    split_item, group_type, group_list_type = call["split_item"], call["group_type"], call["group_list_type"]
    rest = dict(call["unmodelled"])
    bias, act_type = call["bias"], call["act_type"]
    op = "npu_grouped_matmul (quantized)"
    scale = rest.pop("scale", None)
    per_token = rest.pop("per_token_scale", None)
    if bias is not None or act_type != 0 or any(v is not None for v in rest.values()):
        raise NotImplementedError(f"{op}: bias, fused activation, offset and antiquant are not modelled")
    if len(x) != 1 or len(weight) != 1 or group_type != 0 or split_item not in (2, 3):
        raise NotImplementedError(f"{op}: only the MoE form (one x, one [E,K,N] weight, group_type 0, split_item 2/3)")
    h, w = x[0], weight[0]
    _require(h.dtype == torch.int8 and w.dtype == torch.int8, op, "x and weight must both be int8")
    _require(h.dim() == 2 and w.dim() == 3 and w.shape[1] == h.shape[1], op, "x [M, K] and weight [E, K, N]")
    E, K, N = w.shape
    _require(K < GMM_INNER_LIMIT and N < GMM_INNER_LIMIT, op, "each last dim must be below InnerLimit 65536")
    _require(isinstance(group_list, torch.Tensor), op, "the quantized per-token form needs a Tensor group_list")
    _require(group_list.dtype == torch.int64 and group_list.shape == (E,), op, "group_list must be int64 (E,)")
    if group_list_type == 2:
        raise NotImplementedError(f"{op}: group_list_type 2 ([E, 2] index/size pairs) is not modelled")
    _require(bool((group_list >= 0).all()), op, "group_list must be non-negative")
    ends = group_list.cumsum(0) if group_list_type == 1 else group_list
    _require(bool((ends[1:] >= ends[:-1]).all()), op, "group_list (cumsum) must be non-decreasing")
    _require(int(ends[-1]) <= h.shape[0], op, "the group total may not exceed x's rows")
    if scale is None:
        _require(per_token is None, op, "per_token_scale needs scale")
        _require(output_dtype == torch.int32, op, "int8 inputs without scale need output_dtype int32")
        out = torch.full((h.shape[0], N), INT32_MIN, dtype=torch.int64)
    else:
        s = scale[0]
        if s.dtype == torch.int64:
            raise NotImplementedError(f"{op}: the int64 (per-channel, int8 output) scale is not modelled")
        want = {torch.bfloat16: torch.bfloat16, torch.float32: torch.float16}.get(s.dtype)
        _require(want is not None and output_dtype == want, op, "scale bfloat16 -> output bfloat16, float32 -> float16")
        _require(s.shape == (E, N), op, f"scale must be [[E, N]] = [[{E}, {N}]], got {tuple(s.shape)}")
        if per_token is not None:
            p = per_token[0]
            _require(p.dtype == torch.float32 and p.shape == (h.shape[0],), op, "per_token_scale must be [[M]] float32")
        out = torch.full((h.shape[0], N), float("nan"), dtype=torch.float32)
    start = 0
    for e, end in enumerate(ends.tolist()):
        if end > start:
            acc = _int32_checked(_exact_int_matmul(h[start:end], w[e]), op)  # [rows, N]
            if scale is None:
                out[start:end] = acc
            else:
                y = acc.to(torch.float32) * scale[0][e].to(torch.float32)
                out[start:end] = y * per_token[0][start:end, None] if per_token is not None else y
        start = end
    return [out.to(output_dtype)]


def npu_dequant_swiglu_quant(
    x: torch.Tensor,
    *,
    weight_scale: torch.Tensor | None = None,
    activation_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    quant_scale: torch.Tensor | None = None,
    quant_offset: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    activate_left: bool = False,
    quant_mode: int = 0,
    swiglu_mode: int = 0,
    clamp_limit: float = 7.0,
    glu_alpha: float = 1.702,
    glu_bias: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 x [T, 2H] -> x * weight_scale[group] * activation_scale[t] (float32) -> swiglu -> per-row dynamic
    int8 quantization: (int8 [T, H], float32 scale [T]). Modelled: the grouped (count) dynamic form vllm-ascend
    uses (quant_mode 1, swiglu_mode 0, no bias / quant_scale / quant_offset). Rows past the group total are
    garbage (y 0, scale NaN)."""
    op = "npu_dequant_swiglu_quant"
    _require(x.dim() == 2 and x.shape[-1] % 2 == 0, op, "x must be 2-D [TokensNum, 2H] with an even last dim")
    _require(x.dtype in (torch.int32, torch.float16, torch.bfloat16), op, "x must be int32, float16 or bfloat16")
    if x.dtype != torch.int32 or quant_mode != 1 or swiglu_mode != 0 or group_index is None:
        raise NotImplementedError(f"{op}: only int32 x, quant_mode 1, swiglu_mode 0 with group_index is modelled")
    if bias is not None or quant_scale is not None or quant_offset is not None:
        raise NotImplementedError(f"{op}: bias, quant_scale and quant_offset are not modelled")
    T, H = x.shape[0], x.shape[1] // 2
    _require(activation_scale is not None, op, "activation_scale is required when x is int32")
    _require(weight_scale is not None, op, "weight_scale is required to dequantize int32 x")
    _require(H <= DSQ_MAX_H and H % 64 == 0, op, "with group_index H must be <= 10496 and 64-aligned")
    _require(group_index.dtype == torch.int64 and group_index.dim() == 1, op, "group_index must be 1-D int64")
    G = group_index.shape[0]
    _require(weight_scale.dtype == torch.float32 and weight_scale.shape == (G, 2 * H), op, "weight_scale [G, 2H] fp32")
    act = activation_scale.reshape(-1)
    _require(activation_scale.dtype == torch.float32 and act.shape == (T,), op, "activation_scale [T, 1] float32")
    _require(bool((group_index >= 0).all()) and int(group_index.sum()) <= T, op, "counts non-negative, sum <= T")
    total = int(group_index.sum())
    rows = torch.repeat_interleave(torch.arange(G), group_index)  # [total]
    xf = x[:total].to(torch.float32) * weight_scale[rows] * act[:total, None]  # [total, 2H]
    a, b = xf.chunk(2, dim=-1)
    act_half, lin = (a, b) if activate_left else (b, a)
    y, scale = _rows_quant(torch.nn.functional.silu(act_half) * lin)
    y_out = torch.zeros((T, H), dtype=torch.int8)
    s_out = torch.full((T,), float("nan"), dtype=torch.float32)
    y_out[:total], s_out[:total] = y, scale
    return y_out, s_out
