"""ONNX Runtime's native kernels (ONNX Attention, com.microsoft.GroupQueryAttention, com.microsoft.MoE) as
separate implementations: they pass what they take, say a clear no for what they lack, and the checks catch a
wrong use of them (planted layout and window mistakes)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAULTS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from harness.backends.ort_native import _forcing_logits, fc1_interleaved


def _statuses(run) -> dict[tuple[str, str, str, str], tuple[str, str]]:
    return {
        (r["case"]["workload"], r["case"]["shape"], r["case"]["dtype"], r["case"]["inputs"]): (r["status"], r["reason"])
        for r in run.records
    }


def test_native_attention_kernels_pass_what_they_take_and_skip_the_rest_with_reasons(harness_cli) -> None:
    run = harness_cli(
        "run", "--suite", "smoke", "-w", "attention.*", "-b", "ort-cpu-attention,ort-cpu-gqa",
        "--dtype", "float32,float16,bfloat16", "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    by_backend: dict[str, list[dict]] = {}
    for r in run.records:
        by_backend.setdefault(r["case"]["backend"], []).append(r)
    for name, records in by_backend.items():
        passed = [r for r in records if r["status"] == "passed"]
        assert {r["case"]["workload"] for r in passed} == {
            "attention.prefill", "attention.chunked_prefill", "attention.decode", "attention.sliding_window"
        }, name  # fmt: skip
        assert all(r["status"] in ("passed", "skipped") and (r["status"] == "passed" or r["reason"]) for r in records)
        mla = [r for r in records if r["case"]["op"] == "mla"]
        assert mla and all(r["status"] == "skipped" for r in mla)  # no MLA kernel; the contract's default not used
        assert any(f"{name} does not implement op 'mla'" in r["reason"] for r in mla)
    gqa = {r["case"]["shape"]: r for r in by_backend["ort-cpu-gqa"] if r["case"]["dtype"] == "float32"}
    assert gqa["mqa"]["status"] == "skipped" and "D 32 != Dv 16" in gqa["mqa"]["reason"]
    bf16 = [r for r in run.records if r["case"]["dtype"] == "bfloat16" and r["case"]["op"] == "attention"]
    assert bf16 and all(r["status"] == "skipped" and "bfloat16" in r["reason"] for r in bf16)


def test_native_moe_runs_softmax_routing_in_float32_and_refuses_the_rest(harness_cli) -> None:
    run = harness_cli(
        "run", "--suite", "smoke", "-w", "moe.layer,moe.experts", "-b", "ort-cpu-moe",
        "--dtype", "float32,float16", "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    s = _statuses(run)
    for workload in ("moe.layer", "moe.experts"):
        for shape in ("mixtral", "qwen3-moe"):
            assert s[(workload, shape, "float32", "normal")][0] == "passed"
        assert "shared expert" in s[(workload, "qwen2-moe", "float32", "normal")][1]
        assert "sigmoid_group_topk" in s[(workload, "deepseek-v3", "float32", "normal")][1]
        assert "float32 only" in s[(workload, "mixtral", "float16", "normal")][1]


def test_concatenated_fc1_where_the_op_reads_interleaved_rows_fails(harness_cli) -> None:
    run = harness_cli(
        "run", "--plugin", FAULTS, "-b", "bug-ort-moe-concatenated-fc1", "-w", "moe.layer,moe.experts",
        "--shape", "mixtral,qwen3-moe", "--dtype", "float32", "--distribution", "normal", "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 1
    assert {r["status"] for r in run.records} == {"failed"}
    layer = [r for r in run.records if r["case"]["workload"] == "moe.layer"]
    assert all("forced." in r["reason"] for r in layer)  # caught as arithmetic, not excused as routing flips


def test_gqa_window_off_by_one_fails_only_sliding_window(harness_cli) -> None:
    run = harness_cli(
        "run", "--plugin", FAULTS, "-b", "bug-ort-gqa-window-minus-one", "-w", "attention.*", "--shape", "gqa",
        "--dtype", "float32", "--distribution", "normal", "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 1
    s = {r["case"]["workload"]: r["status"] for r in run.records}
    assert s == {
        "attention.sliding_window": "failed",
        "attention.prefill": "passed",
        "attention.chunked_prefill": "passed",
        "attention.decode": "passed",
        "attention.paged_decode": "skipped",  # ORT takes no block table
        "attention.paged_prefill": "skipped",
    }


@pytest.mark.parametrize("renormalize", [True, False])
def test_forcing_logits_give_back_the_forced_routing(renormalize: bool) -> None:
    g = torch.Generator().manual_seed(0)
    T, E, k = 16, 8, 2
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])  # [T, k]
    w = torch.rand(T, k, generator=g) + 0.5
    w = w / w.sum(-1, keepdim=True) if renormalize else w / (w.sum(-1, keepdim=True) * 1.25)  # sums 1 or 0.8
    probs = torch.softmax(_forcing_logits(w, ids, E, renormalize), dim=-1)  # what the op computes first
    top = probs.topk(k, dim=-1)
    got = top.values / top.values.sum(-1, keepdim=True) if renormalize else top.values
    assert torch.equal(top.indices.sort(-1).values, ids.sort(-1).values)
    order = ids.argsort(-1)
    assert torch.allclose(got.gather(1, top.indices.argsort(-1)), w.gather(1, order), atol=1e-6)


def test_fc1_rows_interleave_gate_and_up() -> None:
    gate, up = torch.arange(12.0).reshape(1, 3, 4), 100 + torch.arange(12.0).reshape(1, 3, 4)
    fc1 = fc1_interleaved(gate, up)  # [1, 6, 4]
    assert torch.equal(fc1[0, 0::2], gate[0]) and torch.equal(fc1[0, 1::2], up[0])
