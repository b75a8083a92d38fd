"""Parity metrics, budgets and verdicts on constructed tensors with known errors."""

from __future__ import annotations

import math

import pytest
import torch

from harness import parity

BF16 = parity.budget_for("bfloat16", 64)
FP32 = parity.budget_for("float32", 64)


def test_identical_tensors_have_zero_error_and_pass() -> None:
    x = torch.randn(8, 16)
    m = parity.compare(x, x.double(), FP32)
    assert m.max_abs == 0 and m.rel_l2 == 0 and m.worst_row_rel_l2 == 0 and m.frac_outside == 0
    assert m.cosine == pytest.approx(1.0)
    assert parity.judge(m, FP32).passed


def test_known_relative_error() -> None:
    ref = torch.randn(64, 32, dtype=torch.float64)
    m = parity.compare(ref * (1 + 1e-3), ref, FP32)
    assert m.rel_l2 == pytest.approx(1e-3, rel=1e-6)
    verdict = parity.judge(m, FP32)
    assert not verdict.passed and verdict.failures[0].metric == "rel_l2"
    assert "rel_l2 = 0.001 > budget 1e-05" in verdict.reason


def test_zeros_trip_the_non_triviality_guard_even_under_a_huge_budget() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    loose = parity.Budget(rel_l2=10, worst_row_rel_l2=10, atol=10, rtol=10, max_outside=1)
    verdict = parity.judge(parity.compare(torch.zeros(4, 8), ref, loose), loose)
    assert not verdict.passed and [f.metric for f in verdict.failures] == ["constant_output"]


def test_nonfinite_output_fails_and_is_counted() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    out = ref.clone().float()
    out[1, 2] = float("nan")
    out[3, 0] = float("inf")
    m = parity.compare(out, ref, BF16)
    assert (m.nan_out, m.inf_out, m.nonfinite_mismatch) == (1, 1, 2)
    assert math.isfinite(m.rel_l2)  # finite elements still measured
    assert "nonfinite" in [f.metric for f in parity.judge(m, BF16).failures]


def test_one_bad_row_hidden_in_a_global_norm_is_caught_by_the_worst_row() -> None:
    ref = torch.randn(16384, 16, dtype=torch.float64)
    out = ref.clone()
    out[1234] = 0.0  # one dropped token among 16384
    m = parity.compare(out, ref, BF16)
    assert m.rel_l2 < BF16.rel_l2  # the global norm alone would pass it
    assert m.worst_row == 1234 and m.worst_row_rel_l2 == pytest.approx(1.0)
    verdict = parity.judge(m, BF16)
    assert [f.metric for f in verdict.failures] == ["worst_row_rel_l2"]
    assert m.worst_index[0] == 1234


def test_zero_reference_rows_do_not_divide_by_zero() -> None:
    ref = torch.randn(6, 8, dtype=torch.float64)
    ref[2] = 0.0  # a fully masked query row
    assert parity.compare(ref.clone(), ref, FP32).worst_row_rel_l2 == 0
    out = ref.clone()
    out[2] = 1e-3
    m = parity.compare(out, ref, FP32)
    assert math.isfinite(m.worst_row_rel_l2) and m.worst_row == 2


def test_relative_metrics_are_scale_invariant() -> None:
    ref = torch.randn(16, 16, dtype=torch.float64)
    out = ref + 1e-4 * torch.randn(16, 16, dtype=torch.float64)
    a, b = parity.compare(out, ref, BF16), parity.compare(out * 1e6, ref * 1e6, BF16)
    for name in ("rel_l2", "worst_row_rel_l2", "frac_outside", "cosine"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-15)


def test_budgets_scale_with_dtype_and_reduction_length_and_accept_overrides() -> None:
    assert parity.budget_for("float32", 64).rel_l2 < parity.budget_for("float16", 64).rel_l2 < BF16.rel_l2
    assert parity.budget_for("bfloat16", 16).rel_l2 == parity.budget_for("bfloat16", 64).rel_l2
    assert parity.budget_for("bfloat16", 4096).rel_l2 == pytest.approx(2 * BF16.rel_l2)
    assert parity.budget_for("bfloat16", 64, {"rel_l2": 0.5}).rel_l2 == 0.5
    with pytest.raises(ValueError, match="unknown budget fields"):
        parity.budget_for("bfloat16", 64, {"rel": 0.5})
    with pytest.raises(ValueError, match="no parity budget for dtype 'int8'"):
        parity.budget_for("int8", 64)


def test_judge_against_uses_the_error_ratio_with_a_floor() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(64, 64, dtype=torch.float64, generator=g)
    noise = torch.randn(64, 64, dtype=torch.float64, generator=g)
    baseline = parity.compare(ref + 2e-3 * noise, ref, BF16)
    twice = parity.compare(ref + 3e-3 * noise, ref, BF16)
    much_worse = parity.compare(ref + 1e-2 * noise, ref, BF16)
    assert parity.judge_against(twice, baseline, BF16, "cuda").passed
    verdict = parity.judge_against(much_worse, baseline, BF16, "cuda")
    # Within the absolute budget, but five times the source platform's error: a port regression.
    assert parity.judge(much_worse, BF16).passed and not verdict.passed
    assert verdict.mode == "against cuda" and "rel_l2_vs_cuda" in verdict.reason
    perfect = parity.compare(ref, ref, BF16)
    assert parity.judge_against(parity.compare(ref + 1e-4 * noise, ref, BF16), perfect, BF16, "ref").passed


def test_bitwise_equal() -> None:
    x = torch.randn(5).to(torch.bfloat16)
    assert parity.bitwise_equal(x, x.clone())
    y = x.clone()
    y[0] = -y[0] if y[0] != 0 else 1.0
    assert not parity.bitwise_equal(x, y)
    nan = torch.tensor([float("nan")])
    assert parity.bitwise_equal(nan, nan.clone())
    assert not parity.bitwise_equal(x, x.float())


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"output shape \[2, 3\] does not match the reference's \[3, 2\]"):
        parity.compare(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.float64), FP32)
