"""Quantized formats: the quantizers against hand-computed values, the emulation against the unquantized function
(a real gap) and torch-cpu's kernels against the emulation (tight), and the CLI on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import ops, quant
from harness.op_types import QuantSpec

ROOT = Path(__file__).resolve().parents[1]


def test_int8_per_token_round_half_even_and_symmetric_clamp():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5, -127.0]])  # amax 127: scale 1, ties to even
    q = quant.quantize(x, "int8", (1, 5))
    assert q.scale.item() == 1.0
    assert q.q.tolist() == [[127, 0, 2, -2, -127]]


def test_e4m3_per_tensor_scale_and_static_scale_saturates():
    x = torch.tensor([[896.0, 1.0]])  # amax 896: scale 2
    q = quant.quantize(x, "e4m3", (1, 2))
    assert q.scale.item() == 2.0 and q.q.float().tolist() == [[448.0, 0.5]]
    static = quant.quantize(x, "e4m3", (1, 2), scale=torch.tensor([[1.0]]))  # 896 past the range: saturated
    assert static.q.float().tolist() == [[448.0, 1.0]]


def test_block_scales_are_per_128_block_with_partial_edges():
    w = torch.ones(130, 200)
    w[129, 199] = 896.0  # only the last (partial) block sees it
    q = quant.quantize_weight(w, QuantSpec("fp8-block"))
    assert q.scale.shape == (2, 2)
    assert q.scale[1, 1].item() == 2.0 and q.scale[0, 0] == torch.tensor(1.0) / 448  # float32


@pytest.mark.parametrize("fmt", ["w8a8", "fp8", "fp8-block"])
def test_emulation_differs_from_unquantized_and_kernel_matches_emulation(fmt):
    from harness.backends.torch_cpu import TorchCpu

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 300, generator=g).bfloat16()
    w = (torch.randn(140, 300, generator=g) / 300**0.5).bfloat16()
    spec = QuantSpec(fmt)
    emu, plain = ops.linear(x, w, quant=spec), ops.linear(x, w)
    gap = float((emu - plain).norm() / plain.norm())
    assert 1e-3 < gap < 0.1  # the format's own error is real
    out = TorchCpu().linear(x, w, quant=spec)
    assert out.dtype == torch.bfloat16
    assert float((out.double() - emu).norm() / emu.norm()) < 4e-3  # the kernel: bfloat16 output rounding


def _cli(*args: str, backend: str) -> tuple[int, list[dict]]:
    out = ROOT / f".pytest-quant-{backend}.jsonl"
    paths = (str(ROOT), str(ROOT / "faults"), os.environ.get("PYTHONPATH", ""))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    cmd = [sys.executable, "-m", "harness.cli", "run", "-b", backend, "--preset", "tiny", "--parity-only"]
    proc = subprocess.run(
        [*cmd, "--seeds", "0", "--out", str(out), "--no-table", *args], check=False, env=env, cwd=ROOT
    )
    records = [json.loads(line) for line in out.read_text().splitlines() if '"case"' in line]
    out.unlink()
    return proc.returncode, records


@pytest.mark.parametrize("backend", ["cpu-reference", "torch-cpu"])
def test_cli_quantized_cases_pass_and_record_format_error(backend):
    rc, records = _cli("-w", "moe.experts", "--dtype", "w8a8,fp8-block", "--shape", "qwen3-moe", backend=backend)
    assert rc == 0 and len(records) == 4
    for r in records:
        assert r["status"] == "passed"
        assert r["parity"]["format_error"]["rel_l2"] > 3 * r["parity"]["metrics"]["rel_l2"]


def test_format_error_is_judged_only_with_budget():
    rc, records = _cli(
        "-w", "moe.experts", "--dtype", "fp8", "--shape", "qwen3-moe", "--budget", "rel_l2=0.02", backend="torch-cpu"
    )
    assert rc == 1 and all("format_error.rel_l2" in r["parity"]["verdict"]["reason"] for r in records)


def test_a_format_error_budget_judges_the_format_alone_and_leaves_the_kernel_budget_as_it_was():
    """`--budget format_error.rel_l2=X`: the format's own error against X; the kernel error keeps its default
    budget (a plain `--budget rel_l2=` would loosen or tighten both)."""
    args = ("-w", "linear.projection", "--dtype", "w8a8")  # normal and stress inputs
    rc, tight = _cli(*args, "--budget", "format_error.rel_l2=0.001", backend="torch-cpu")
    assert rc == 1 and tight
    for r in tight:
        reasons = r["parity"]["verdict"]["reason"].split("; ")
        assert reasons and all(x.startswith("format_error.") for x in reasons), reasons  # the kernel passes
        assert r["parity"]["budget"]["rel_l2"] > 0.001  # the record's (kernel) budget is the default
    for loosened in ("format_error.rel_l2=0.5", "rel_l2=0.5"):  # only the fields set judge the format error
        rc, loose = _cli(*args, "--budget", loosened, backend="torch-cpu")  # (stress: frac_outside 0.034 > 0.01)
        assert rc == 0 and len(loose) == 4 and all(r["status"] == "passed" for r in loose), loosened
    rc, kernel = _cli(*args, "--budget", "rel_l2=0.0001", backend="torch-cpu")
    assert rc == 1 and all(  # the kernel's own rel_l2 fails (the format's too: plain keys judge both)
        any(x.startswith("rel_l2") for x in r["parity"]["verdict"]["reason"].split("; ")) for r in kernel
    )


def test_quantized_dtype_not_declared_is_a_skip():
    _, records = _cli("-w", "linear.projection", "--dtype", "fp8-block", backend="ascend-sim")
    assert records and all(r["status"] == "skipped" and "fp8-block" in r["reason"] for r in records)


def test_smoke_and_ci_plan_a_few_quantized_cases_and_paper_the_real_ones():
    from dataclasses import replace

    from harness.backend import default_registry
    from harness.planning import Planner
    from harness.suites import BUILTIN_SUITES
    from harness.workload import WorkloadRegistry

    planner = Planner(default_registry(), WorkloadRegistry.discover())
    for name in ("smoke", "ci"):
        cases = planner.plan(replace(BUILTIN_SUITES[name], backends=("torch-cpu",)))
        quantized = [c for c in cases if c.dtype in ("w8a8", "fp8", "fp8-block")]
        assert {c.workload for c in quantized} == {"linear.projection", "moe.experts", "moe.layer"}
        assert {c.dtype for c in quantized} == {"w8a8", "fp8", "fp8-block"} and {c.seed for c in quantized} == {0}
        assert len(quantized) <= (60 if name == "smoke" else 40)  # make test stays fast
    paper = planner.plan(replace(BUILTIN_SUITES["paper"], backends=("cuda",)))
    real = {(c.workload, c.shape) for c in paper if c.dtype in ("w8a8", "fp8")}
    assert {("moe.layer", "qwen3-moe"), ("moe.layer", "deepseek-v3"), ("linear.projection", "qwen3-30b-a3b-q")} <= real
    assert {c.preset for c in paper} == {"real"}


def test_a_kernel_that_skips_the_format_fails_even_where_the_budget_holds():
    # w8a8's own error (~1%) lies inside the bfloat16 budget the emulation is judged with: the unquantized GEMM
    # passed linear.projection w8a8 until the output had to be nearer the emulation than the unquantized function
    plugin = str(ROOT / "faults" / "harness_faults" / "quant_faults.py")
    rc, records = _cli("-w", "linear.projection", "--dtype", "w8a8", "--plugin", plugin, backend="bug-quant-skipped")
    assert rc == 1 and len(records) == 4  # two shapes, two input distributions
    for r in records:
        assert r["status"] == "failed" and "format_error.not_quantized" in r["parity"]["verdict"]["reason"]


@pytest.mark.parametrize("fmt", ["w8a8", "fp8", "fp8-block"])
def test_emulated_gemm_is_the_product_of_the_dequantized_operands(fmt):
    # group-wise dequantization after exact products is, in exact arithmetic, dequantize(x) @ dequantize(w)^T:
    # an independent check of the scale indexing emulated_matmul and torch_quant.quant_matmul both carry (a
    # mistake copied into both cancels in the kernel-vs-emulation test above)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 300, generator=g) * torch.linspace(0.1, 10, 9)[:, None]  # per-token scales differ
    w = torch.randn(140, 300, generator=g) * torch.linspace(0.1, 10, 140)[:, None]  # per-channel / block too
    spec = QuantSpec(fmt)
    xq, wq = quant.quantize_activation(x, spec), quant.quantize_weight(w, spec)
    direct = xq.dequantize() @ wq.dequantize().T  # float64 [T, N]
    assert torch.allclose(quant.emulated_matmul(xq, wq), direct, rtol=1e-12, atol=1e-12)
