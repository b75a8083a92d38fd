"""Attention workloads: presets, seeded inputs rounded to the case dtype, FLOP and byte counts."""

from __future__ import annotations

import pytest
import torch

from harness.models.attention import AttentionShape, visible_pairs
from harness.workload import WorkloadRegistry, random_tensor

REGISTRY = WorkloadRegistry.discover()


# op attention's workloads (attention.mla_decode has one geometry, DeepSeek-V3's: tests/test_mla.py)
@pytest.mark.parametrize("name", [n for n in REGISTRY.names() if REGISTRY.get(n).op == "attention"])
def test_every_workload_has_gqa_and_mqa_tiny_small_and_real(name: str) -> None:
    w = REGISTRY.get(name)
    assert set(w.presets) == {"tiny", "small", "real"}
    for preset in ("tiny", "small"):
        shapes = w.shapes(preset)
        assert shapes["gqa"].hq > shapes["gqa"].hkv > 1 and shapes["mqa"].hkv == 1
    real = w.shapes("real")
    assert (real["llama3-8b"].hq, real["llama3-8b"].hkv, real["llama3-8b"].d) == (32, 8, 128)
    assert real["deepseek-v3-mla"].d != real["deepseek-v3-mla"].dv


def test_kind_specific_geometry() -> None:
    assert REGISTRY.get("attention.decode").shapes("tiny")["gqa"].sq == 1
    assert len(set(REGISTRY.get("attention.decode").shapes("tiny")["gqa"].kv_lens)) > 1  # ragged
    chunk = REGISTRY.get("attention.chunked_prefill").shapes("tiny")["gqa"]
    assert chunk.sq < chunk.skv
    assert REGISTRY.get("attention.sliding_window").shapes("tiny")["gqa"].window is not None


def test_inputs_are_seeded_rounded_and_independent_of_order() -> None:
    w = REGISTRY.get("attention.decode")
    shape = w.shapes("tiny")["gqa"]
    a = w.make_inputs(shape, torch.bfloat16, 0, "normal")
    b = w.make_inputs(shape, torch.bfloat16, 0, "normal")
    c = w.make_inputs(shape, torch.bfloat16, 1, "normal")
    assert a["q"].dtype == torch.bfloat16 and a["kv_lens"].dtype == torch.int64
    assert torch.equal(a["q"], b["q"]) and not torch.equal(a["q"], c["q"])
    assert not torch.equal(a["q"][0, 0, 0, :8], a["k"][0, 0, 0, :8])  # names salt the generator


def test_stress_inputs_are_wider_with_outliers() -> None:
    normal = random_tensor((4096,), torch.float32, seed=0, name="x", distribution="normal")
    stress = random_tensor((4096,), torch.float32, seed=0, name="x", distribution="stress")
    assert stress.abs().max() >= 24 > normal.abs().max() and stress.std() > 2 * normal.std()


def test_flops_count_visible_pairs_only() -> None:
    full = AttentionShape(b=1, hq=2, hkv=1, sq=4, skv=4, d=8, dv=8, causal=False)
    causal = AttentionShape(b=1, hq=2, hkv=1, sq=4, skv=4, d=8, dv=8, causal=True)
    assert visible_pairs(full) == 16 and visible_pairs(causal) == 10
    w = REGISTRY.get("attention.prefill")
    assert w.flops(full) == 2 * 2 * 16 * 16
    ragged = AttentionShape(b=2, hq=2, hkv=1, sq=1, skv=8, d=8, dv=4, kv_lens=(8, 3))
    assert visible_pairs(ragged) == 11
    # q and out for 2 x 2 heads, k and v for the 11 valid cache rows of 1 kv head, bf16.
    assert w.bytes_moved(ragged, 2) == (2 * 2 * 1 * 12 + 1 * 11 * 12) * 2
