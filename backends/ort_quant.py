"""Quantized `linear` on ONNX Runtime: w8a8 as a graph of standard ONNX ops, fp8 a skip with the reason.

w8a8 is the harness's format exactly (harness/quant.py): int8 symmetric, scale = amax / 127 per row in float32,
q = round-half-to-even(clamp(x / scale, -127, 127)), per token for the activations and per output channel for
the weights, int32 products, dequantized in float32. ONNX's `DynamicQuantizeLinear` does NOT compute it: it is
per tensor and asymmetric uint8 (scale = (max(0, max x) - min(0, min x)) / 255 with a zero point; "right now
only uint8 is supported", ONNX operator docs; ORT 1.32 returns uint8 with zero point 102 for [1, -2, 3, 0.5]),
so using it would be another format. The graph spells the format's quantizer out instead, with ops whose
semantics are fixed by the spec: Abs, ReduceMax, Div, Greater / Where (amax 0 -> scale 1), Clip, Round (ties to
even), Cast to int8; then `MatMulInteger` (int8 x int8 -> int32, which ORT's CPU kernel takes) on x_q and the
transposed w_q, Cast to float and the two scale multiplications. The graph takes x and w in float32 (the
bfloat16 carrier widened exactly: ORT's CPU kernels have no bfloat16) and returns float32, rounded to bfloat16 by
the backend (one rounding, as a bfloat16 epilogue). The weight is quantized inside the graph, so a timed call
includes it (the op receives unquantized weights).

fp8 / fp8-block: the standard opset has no float8 matrix product on ORT's CPU provider (MatMul takes no float8
inputs; float8 appears only in QuantizeLinear / DequantizeLinear / Cast, which would be an fp32 GEMM on
dequantized values, not the format's kernel); those cases are skips naming that.
"""

from __future__ import annotations

from typing import Any

from harness.lazy import torch

ONNX_OPSET = 21
INT8_MAX = 127.0
NO_FP8 = (
    "ONNX Runtime has no float8 GEMM in the standard opset (MatMul / Gemm take no float8 inputs; float8 is only "
    "in Cast / QuantizeLinear / DequantizeLinear, which would run an fp32 GEMM on dequantized values): {fmt} is "
    "not exported"
)


def _quantizer(name: str) -> list[Any]:
    """Nodes quantizing `name` [R, K] float32 per row: `{name}_q` int8 [R, K], `{name}_s` float32 [R, 1]."""
    from onnx import TensorProto, helper

    n = helper.make_node
    return [
        n("Abs", [name], [f"{name}_abs"]),
        n("ReduceMax", [f"{name}_abs", "axis1"], [f"{name}_amax"], keepdims=1),  # [R, 1]
        n("Div", [f"{name}_amax", "qmax"], [f"{name}_s0"]),
        n("Greater", [f"{name}_amax", "zero"], [f"{name}_pos"]),
        n("Where", [f"{name}_pos", f"{name}_s0", "one"], [f"{name}_s"]),  # amax 0: scale 1
        n("Div", [name, f"{name}_s"], [f"{name}_scaled"]),
        n("Clip", [f"{name}_scaled", "qmin", "qmax"], [f"{name}_clip"]),
        n("Round", [f"{name}_clip"], [f"{name}_round"]),  # ties to even
        n("Cast", [f"{name}_round"], [f"{name}_q"], to=TensorProto.INT8),
    ]


def w8a8_linear_model() -> Any:
    """The ONNX model: x [T, K], w [N, K] float32 -> y [T, N] float32 (T, K, N symbolic)."""
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    consts = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("qmax", f32, [], [INT8_MAX]),
        helper.make_tensor("qmin", f32, [], [-INT8_MAX]),
        helper.make_tensor("zero", f32, [], [0.0]),
        helper.make_tensor("one", f32, [], [1.0]),
    ]
    n = helper.make_node
    nodes = [
        *_quantizer("x"),
        *_quantizer("w"),
        n("Transpose", ["w_q"], ["w_qt"], perm=[1, 0]),  # [K, N]
        n("MatMulInteger", ["x_q", "w_qt"], ["acc"]),  # int32 [T, N], exact
        n("Cast", ["acc"], ["acc_f"], to=f32),
        n("Transpose", ["w_s"], ["w_st"], perm=[1, 0]),  # [1, N]
        n("Mul", ["acc_f", "x_s"], ["y_x"]),
        n("Mul", ["y_x", "w_st"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "harness_w8a8_linear",
        [helper.make_tensor_value_info("x", f32, ["T", "K"]), helper.make_tensor_value_info("w", f32, ["N", "K"])],
        [helper.make_tensor_value_info("y", f32, ["T", "N"])],
        initializer=consts,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=10)


def run_w8a8(session: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [T, K] @ w [N, K]^T in w8a8 on the session of w8a8_linear_model(): [T, N] in the dtype of x."""
    feeds = {"x": x.detach().float().contiguous().numpy(), "w": w.detach().float().contiguous().numpy()}
    (y,) = session.run(None, feeds)
    return torch.from_numpy(y).to(x.dtype)
