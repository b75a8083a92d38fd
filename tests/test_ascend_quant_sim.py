"""The simulated W8A8 torch_npu ops (backends/ascend/sim_quant.py) against direct int64 / float64 computations
written here, their documented refusals and their output dtypes and shapes (docs/ascend.md "Quantized ops")."""

from __future__ import annotations

import struct

import pytest
import torch

from harness.backends.ascend import sim
from harness.backends.ascend.sim_quant import QuantArgumentError

G = torch.Generator().manual_seed(0)


def int8(*shape: int, lo: int = -128, hi: int = 127) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=G, dtype=torch.int8)


def int_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [m, k] @ b [k, n] as explicit int64 products summed: no float on the way."""
    return (a.to(torch.int64)[:, :, None] * b.to(torch.int64)[None, :, :]).sum(dim=1)


def quant_rows_ref(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented per-token int8 quantization, element by element in Python floats: float32 inv = 127 /
    rowmax, float32 x * inv, round half to even (Python's round), scale = float32(1 / inv)."""
    f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]  # noqa: E731 - one rounding to float32
    ys, scales = [], []
    for row in xf.tolist():
        amax = max(abs(v) for v in row)
        inv = f32(127.0 / amax) if amax else float("inf")
        ys.append([max(-128, min(127, round(f32(v * inv)))) if amax else 0 for v in row])
        scales.append(f32(1.0 / inv))
    return torch.tensor(ys, dtype=torch.int8), torch.tensor(scales, dtype=torch.float32)


# ----- npu_dynamic_quant -----


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dynamic_quant_matches_the_documented_per_token_formula(dtype: torch.dtype) -> None:
    x = (torch.randn(2, 5, 48, generator=G) * 3).to(dtype)
    x[0, 1] = 0  # a row of zeros: y 0, scale 0
    y, scale = sim.npu_dynamic_quant(x)
    assert (y.dtype, y.shape, scale.dtype, scale.shape) == (torch.int8, x.shape, torch.float32, x.shape[:-1])
    want_y, want_s = quant_rows_ref(x.reshape(-1, 48).double())
    assert torch.equal(y.reshape(-1, 48), want_y) and torch.equal(scale.reshape(-1), want_s)
    # and within half a step of the float64 function, the row max mapping to +-127
    amax = x.double().abs().amax(-1, keepdim=True)
    step = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    assert float((y.double() - x.double() / step).abs().max()) <= 0.5 + 1e-4
    assert int(y.abs().amax()) == 127


def test_dynamic_quant_rounds_ties_to_even() -> None:
    """Row max 127 makes inv exactly 1, so x * inv holds the exact ties 0.5, 2.5, -2.5, 3.5, -0.5."""
    x = torch.tensor([[127.0, 0.5, 2.5, -2.5, 3.5, -0.5, 1.5, 126.5]], dtype=torch.float16)
    y, scale = sim.npu_dynamic_quant(x)
    assert y.tolist() == [[127, 0, 2, -2, 4, 0, 2, 126]]
    assert scale.tolist() == [1.0]


def test_dynamic_quant_smooth_scales_alone_and_per_group() -> None:
    x = torch.randn(6, 64, generator=G).to(torch.bfloat16)
    smooth = (torch.rand(64, generator=G) + 0.5).to(torch.bfloat16)
    y, s = sim.npu_dynamic_quant(x, smooth_scales=smooth)
    want = quant_rows_ref(x.double() * smooth.double())
    assert torch.equal(y, want[0]) and torch.equal(s, want[1])
    groups = (torch.rand(3, 64, generator=G) + 0.5).to(torch.bfloat16)
    index = torch.tensor([2, 2, 6], dtype=torch.int32)  # rows 0-1 group 0, none in group 1, 2-5 group 2
    y, s = sim.npu_dynamic_quant(x, smooth_scales=groups, group_index=index)
    rows = torch.tensor([0, 0, 2, 2, 2, 2])
    want = quant_rows_ref(x.double() * groups.double()[rows])
    assert torch.equal(y, want[0]) and torch.equal(s, want[1])


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"x": torch.ones(2, 8)}, "float16 or bfloat16"),
        ({"x": torch.ones(8, dtype=torch.float16)}, "greater than 1"),
        ({"dst_type": torch.float8_e4m3fn}, "Ascend 950"),
        ({"dst_type": torch.int16}, "int8 or quint4x2"),
        ({"smooth_scales": torch.ones(7, dtype=torch.float16)}, "last dim"),
        ({"smooth_scales": torch.ones(8, dtype=torch.bfloat16)}, "x's dtype"),
        (
            {"smooth_scales": torch.ones(2, 8, dtype=torch.float16), "group_index": torch.tensor([1, 3])},
            "int32",
        ),
        (
            {
                "smooth_scales": torch.ones(2, 8, dtype=torch.float16),
                "group_index": torch.tensor([1, 3], dtype=torch.int32),
            },
            "number of rows",
        ),
        (
            {
                "smooth_scales": torch.ones(2, 8, dtype=torch.float16),
                "group_index": torch.tensor([3, 1], dtype=torch.int32),
            },
            "monotonically",
        ),
    ],
)
def test_dynamic_quant_refuses_what_the_page_forbids(kwargs: dict, words: str) -> None:
    x = kwargs.pop("x", torch.ones(4, 8, dtype=torch.float16))
    with pytest.raises(QuantArgumentError, match=words):
        sim.npu_dynamic_quant(x, **kwargs)


# ----- npu_quant_matmul -----


def test_quant_matmul_w8a8_per_token_per_channel_bf16() -> None:
    """The adapter's W8A8 linear: a (n, k) int8 weight passed as the (k, n) view, bf16 per-channel scale,
    float32 per-token scale, bf16 output; the int sums reach past int16 and the fp32 2^24 mantissa."""
    m, k, n = 5, 1200, 7
    x1, w = int8(m, k), int8(n, k)
    x1[0], w[0] = 127, 127  # one sum of 1200 * 16129, far past int16 and 2^24
    scale = (torch.rand(n, generator=G) * 1e-2).to(torch.bfloat16)
    pertoken = torch.rand(m, generator=G) * 1e-2
    out = sim.npu_quant_matmul(x1, w.t(), scale, pertoken_scale=pertoken, output_dtype=torch.bfloat16)
    assert (out.dtype, out.shape) == (torch.bfloat16, (m, n))
    acc = int_sum(x1, w.t())
    assert int(acc.abs().max()) == 1200 * 16129
    # the documented order, each step rounded to float32, then once to bf16
    want = ((acc.to(torch.float32) * scale.to(torch.float32)) * pertoken[:, None]).to(torch.bfloat16)
    assert torch.equal(out, want)
    exact = acc.double() * scale.double() * pertoken.double()[:, None]  # the float64 function
    assert float(((out.double() - exact).abs() / exact.abs().clamp(min=1e-30)).max()) <= 2.0**-8


def test_quant_matmul_scale_order_is_per_channel_then_per_token_in_float32() -> None:
    """A crafted case where the float32 rounding order shows in float16: (acc * scale) * pertoken."""
    x1 = torch.tensor([[127, 1]], dtype=torch.int8)
    x2 = torch.tensor([[83], [113]], dtype=torch.int8)  # acc = 10654
    scale = torch.tensor([float.fromhex("0x1.42d76cp-11")])
    pertoken = torch.tensor([float.fromhex("0x1.16b774p-8")])
    out = sim.npu_quant_matmul(x1, x2, scale, pertoken_scale=pertoken, output_dtype=torch.float16)
    assert out.item() == 0.02789306640625  # a * (scale * pertoken) would give 0.0279083251953125


def test_quant_matmul_float_bias_after_scales_and_int32_bias_in_the_accumulator() -> None:
    m, k, n = 3, 16, 4
    x1, x2 = int8(m, k), int8(k, n)
    scale, pertoken = torch.rand(n, generator=G), torch.rand(m, generator=G)
    acc = int_sum(x1, x2)
    fbias = torch.randn(n, generator=G).to(torch.bfloat16)
    out = sim.npu_quant_matmul(x1, x2, scale, pertoken_scale=pertoken, bias=fbias, output_dtype=torch.bfloat16)
    want = (acc.to(torch.float32) * scale * pertoken[:, None] + fbias.float()).to(torch.bfloat16)
    assert torch.equal(out, want)
    ibias = torch.randint(-1000, 1000, (n,), generator=G, dtype=torch.int32)
    out = sim.npu_quant_matmul(x1, x2, scale, pertoken_scale=pertoken, bias=ibias, output_dtype=torch.bfloat16)
    want = ((acc + ibias.long()).to(torch.float32) * scale * pertoken[:, None]).to(torch.bfloat16)
    assert torch.equal(out, want)
    with pytest.raises(NotImplementedError, match="overflows"):
        big = torch.full((n,), 2**31 - 1, dtype=torch.int32)
        sim.npu_quant_matmul(torch.full((1, k), 127, dtype=torch.int8), torch.full((k, n), 127, dtype=torch.int8),
                             scale, bias=big, output_dtype=torch.bfloat16)  # fmt: skip


def test_trans_quant_param_packs_fp19_and_the_offset_and_quant_matmul_reads_it() -> None:
    scale = torch.tensor([0.1, 3.0e-3, 1.2345678])
    offset = torch.tensor([-3.0, 300.0, -1000.0])
    packed = sim.npu_trans_quant_param(scale, offset)
    for i, (s, o) in enumerate(zip(scale.tolist(), [-3, 255, -256], strict=True)):
        bits = struct.unpack("<I", struct.pack("<f", s))[0] & 0xFFFFE000
        assert int(packed[i]) == bits | (1 << 46) | ((o & 0x1FF) << 37)
    x1, x2 = int8(4, 32), int8(32, 3)
    out = sim.npu_quant_matmul(x1, x2, sim.npu_trans_quant_param(scale), output_dtype=torch.float16)
    fp19 = torch.tensor([struct.unpack("<f", struct.pack("<I", int(p) & 0xFFFFE000))[0] for p in packed.tolist()])
    assert torch.equal(out, (int_sum(x1, x2).to(torch.float32) * fp19).to(torch.float16))
    assert not torch.equal(fp19, scale)  # the truncation is real


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"x2": torch.ones(16, 4, dtype=torch.int8)}, "k = 8"),
        ({"x1": torch.ones(4, 8)}, "int8"),
        ({"scale": torch.ones(3)}, r"\(n,\)"),
        ({"pertoken_scale": torch.ones(5)}, r"\(m,\)"),
        ({"output_dtype": torch.float16, "scale": torch.ones(4, dtype=torch.bfloat16)}, "A2/A3 table"),
        ({"output_dtype": torch.float16, "pertoken_scale": torch.ones(4, dtype=torch.bfloat16)}, "A2/A3 table"),
        ({"bias": torch.ones(4, dtype=torch.float16), "output_dtype": torch.int8}, "A2/A3 table"),
        ({"x1": torch.ones(4, 65536, dtype=torch.int8), "x2": torch.ones(65536, 4, dtype=torch.int8)}, "65535"),
    ],
)
def test_quant_matmul_refuses_what_the_page_forbids(kwargs: dict, words: str) -> None:
    args = {
        "x1": torch.ones(4, 8, dtype=torch.int8),
        "x2": torch.ones(8, 4, dtype=torch.int8),
        "scale": torch.ones(4),
        "pertoken_scale": torch.ones(4),
        "output_dtype": torch.bfloat16,
    }
    args.update(kwargs)
    with pytest.raises(QuantArgumentError, match=words):
        sim.npu_quant_matmul(args.pop("x1"), args.pop("x2"), args.pop("scale"), **args)


# ----- npu_grouped_matmul (quantized MoE form) and npu_dequant_swiglu_quant -----


def _moe_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = int8(9, 40), int8(3, 40, 6)  # 7 routed rows (counts 3, 0, 4), 2 past the group total
    return h, w, torch.tensor([3, 0, 4], dtype=torch.int64)


@pytest.mark.parametrize("group_list_type", [0, 1])
def test_grouped_matmul_int8_per_token_bf16_and_int32(group_list_type: int) -> None:
    h, w, counts_t = _moe_case()
    group_list = counts_t.cumsum(0) if group_list_type == 0 else counts_t
    scale = (torch.rand(3, 6, generator=G) * 1e-2).to(torch.bfloat16)
    pertoken = torch.rand(9, generator=G)
    common = {"group_list": group_list, "group_type": 0, "split_item": 2, "group_list_type": group_list_type}
    (out,) = sim.npu_grouped_matmul(
        [h], [w], scale=[scale], per_token_scale=[pertoken], output_dtype=torch.bfloat16, **common
    )
    (raw,) = sim.npu_grouped_matmul([h], [w], output_dtype=torch.int32, **common)
    assert (out.dtype, out.shape, raw.dtype, raw.shape) == (torch.bfloat16, (9, 6), torch.int32, (9, 6))
    experts = [0, 0, 0, 2, 2, 2, 2]
    acc = torch.stack([int_sum(h[i : i + 1], w[e])[0] for i, e in enumerate(experts)])  # [7, 6]
    assert torch.equal(raw[:7].long(), acc)
    want = (acc.to(torch.float32) * scale.float()[experts] * pertoken[:7, None]).to(torch.bfloat16)
    assert torch.equal(out[:7], want)
    assert out[7:].isnan().all()  # garbage rows, loud


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"scale": [torch.ones(3, 6)]}, "float32 -> float16"),
        ({"scale": [torch.ones(3, 5, dtype=torch.bfloat16)]}, r"\[\[E, N\]\]"),
        ({"group_list": torch.tensor([3, 4, 10])}, "exceed"),
        ({"group_list": [3, 3, 7]}, "Tensor group_list"),
        ({"per_token_scale": [torch.ones(9, dtype=torch.bfloat16)]}, "float32"),
    ],
)
def test_grouped_matmul_int8_refuses_what_the_page_forbids(kwargs: dict, words: str) -> None:
    h, w, _ = _moe_case()
    args = {
        "scale": [torch.ones(3, 6, dtype=torch.bfloat16)],
        "group_list": torch.tensor([3, 3, 7]),
        "group_type": 0,
        "split_item": 2,
        "output_dtype": torch.bfloat16,
    }
    args.update(kwargs)
    with pytest.raises(QuantArgumentError, match=words):
        sim.npu_grouped_matmul([h], [w], **args)


def test_dequant_swiglu_quant_grouped_dynamic() -> None:
    T, H = 6, 64
    x = torch.randint(-50000, 50000, (T, 2 * H), generator=G, dtype=torch.int32)
    ws = torch.rand(2, 2 * H, generator=G) * 1e-3
    act = torch.rand(T, generator=G) * 1e-2
    y, s = sim.npu_dequant_swiglu_quant(
        x, weight_scale=ws, activation_scale=act, group_index=torch.tensor([2, 3]), activate_left=True, quant_mode=1
    )
    assert (y.dtype, y.shape, s.dtype, s.shape) == (torch.int8, (T, H), torch.float32, (T,))
    rows = torch.tensor([0, 0, 1, 1, 1])
    xf = x[:5].to(torch.float32) * ws[rows] * act[:5, None]
    gate, up = xf[:, :H].double(), xf[:, H:].double()
    swiglu = (gate / (1 + torch.exp(-gate)) * up).float()  # silu(gate) * up, the left half activated
    want_y, want_s = quant_rows_ref(swiglu.double())
    assert int((y[:5].int() - want_y.int()).abs().max()) <= 1  # silu's float32 last bit may move a rounding
    assert torch.allclose(s[:5], want_s, rtol=1e-6) and s[5:].isnan().all()
    with pytest.raises(QuantArgumentError, match="64-aligned"):
        sim.npu_dequant_swiglu_quant(
            x[:, :96], weight_scale=ws[:, :96], activation_scale=act, group_index=torch.tensor([6]), quant_mode=1
        )
