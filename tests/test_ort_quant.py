"""ONNX Runtime in the quantized formats: w8a8 `linear` as a graph of standard ops (backends/ort_quant.py) computes
the harness's symmetric per-token / per-channel int8 format exactly (its float32 output against the float64
emulation); ONNX's own DynamicQuantizeLinear is another format (asymmetric uint8, per tensor); fp8 is a skip."""

from __future__ import annotations

import pytest
import torch

from harness import ops, quant
from harness.backend import UnsupportedCaseError
from harness.op_types import QuantSpec

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def backend():
    from harness.backends.onnxruntime import OrtCpu

    return OrtCpu()


def _inputs(T: int, K: int, N: int, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(T, K, generator=g).to(dtype), (torch.randn(N, K, generator=g) / K**0.5).to(dtype)


@pytest.mark.parametrize("dims", [(32, 320, 192), (1, 60, 30), (7, 128, 9)])
def test_w8a8_graph_is_the_format_exactly(backend, dims) -> None:
    x, w = _inputs(*dims, dtype=torch.float32)  # float32 out: no bfloat16 rounding between graph and emulation
    spec = QuantSpec("w8a8")
    out = backend.linear(x, w, quant=spec)
    emu = quant.emulated_linear(x, w, spec)
    assert out.dtype == torch.float32
    assert float((out.double() - emu).norm() / emu.norm()) < 1e-6  # float32 dequant rounding only


def test_w8a8_ties_round_to_even_and_zero_rows_get_scale_one(backend) -> None:
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5, -127.0, 0.0, 0.0, 0.0], [0.0] * 8])  # amax 127: x / scale = x
    w = torch.eye(8)[:5] * 127.0  # w_q = 127 * I, scale 1: y[t, n] = x_q[t, n] * 127
    out = backend.linear(x, w, quant=QuantSpec("w8a8"))
    assert (out / 127).tolist() == [[127.0, 0.0, 2.0, -2.0, -127.0], [0.0] * 5]


def test_w8a8_bfloat16_case_returns_bfloat16_close_to_the_emulation(backend) -> None:
    x, w = _inputs(16, 300, 140)
    spec = QuantSpec("w8a8")
    out = backend.linear(x, w, quant=spec)
    emu, plain = ops.linear(x, w, quant=spec), ops.linear(x, w)
    assert out.dtype == torch.bfloat16
    assert float((out.double() - emu).norm() / emu.norm()) < 4e-3
    assert float((emu - plain).norm() / plain.norm()) > 1e-3  # the emulation is not the unquantized function


def test_onnx_dynamic_quantize_linear_is_another_format() -> None:
    """Why the graph does not use DynamicQuantizeLinear: uint8 with a zero point, one scale per tensor."""
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    outs = [helper.make_tensor_value_info(n, t, []) for n, t in (("y", 2), ("s", 1), ("z", 2))]
    graph = helper.make_graph([node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, scale, zero = session.run(None, {"x": torch.tensor([1.0, -2.0, 3.0, 0.5]).numpy()})
    assert y.dtype.name == "uint8" and int(zero) != 0 and abs(float(scale) - 5.0 / 255) < 1e-7


@pytest.mark.parametrize("fmt", ["fp8", "fp8-block"])
def test_fp8_is_a_skip_naming_why(backend, fmt) -> None:
    x, w = _inputs(16, 128, 64)
    with pytest.raises(UnsupportedCaseError, match="no float8 GEMM"):
        backend.linear(x, w, quant=QuantSpec(fmt))


def test_cli_w8a8_passes_and_fp8_skips(harness_cli) -> None:
    run = harness_cli(
        "run", "-w", "linear.projection", "--dtype", "w8a8,fp8", "--shape", "proj", "-b", "ort-cpu",
        "--preset", "tiny", "--seeds", "0", "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    status = {(r["case"]["dtype"], r["status"]) for r in run.records if "case" in r}
    assert status == {("w8a8", "passed"), ("fp8", "skipped")}
