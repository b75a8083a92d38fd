"""The benchmark scripts run end to end and print their figures (no timing assertions: shared machines are noisy)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the MoE benchmark compares against transformers (llm/test extra)")

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moe_cpu_benchmark_prints_tokens_per_second_beside_transformers(tmp_path: Path, capsys) -> None:
    out = tmp_path / "moe.jsonl"
    bench = load("moe_cpu")
    assert bench.main(["--preset", "tiny", "--time-budget", "0.02", "--rounds", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "torch-cpu tok/s" in printed and "hf grouped_mm tok/s" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["shape"] for r in rows} == {"mixtral", "qwen3-moe", "qwen2-moe", "deepseek-v3"}
    for r in rows:
        assert set(r["tokens_per_s"]) == {"torch-cpu", "grouped_mm", "eager"}
        assert all(v > 0 for v in r["tokens_per_s"].values())
        assert r["hf_rel_l2_vs_torch_cpu"] < 1e-5  # float32: the same function on the same weights


def test_overhead_benchmark_prints_the_ops_share_and_the_bound_call_beside_a_bare_session(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from harness.backends.torch_cpu import TorchCpu

    attention = TorchCpu.attention
    bench = load("overhead")
    assert bench.main(["-w", "attention.decode", "--rounds", "20", "--out", str(tmp_path / "o.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "of the sweep's wall time" in printed and "bare session.run" in printed and "harness (bound)" in printed
    assert TorchCpu.attention is attention  # the clock is taken off the class again


def test_sharing_benchmark_runs_alone_in_a_row_and_at_once(capsys) -> None:
    bench = load("sharing")
    args = "run -w attention.decode -b torch-cpu --dtype float32 --parity-only --no-table"
    assert bench.main(["--threads", "1", "--args", args]) == 0
    printed = capsys.readouterr().out
    assert "3 in a row" in printed and "3 at once" in printed and "at once / in a row" in printed


def test_timing_checks_benchmark_prints_the_median_with_checks_on_beside_off(capsys) -> None:
    assert load("timing_checks").main(["--rounds", "1", "--time-budget", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("on/off") >= 3 and "valid: False" not in printed
