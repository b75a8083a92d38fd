"""Timings that cannot be fooled (issue 23): each planted cheat (tests/plugins/cheats.py) is flagged invalid with
its reason and fails the run; honest backends on a ci-like selection never are."""

from __future__ import annotations

import pytest

from harness.calibrate import Calibration
from harness.ceilings import CACHE_ALLOWANCE, calibrated, violation
from harness.results import TimingRecord
from harness.timing_checks import checksum, mismatch, perturbed
from tests.conftest import plugin

CHEATS = plugin("cheats")
ONE_CASE = ("-w", "attention.prefill", "--preset", "tiny", "--shape", "gqa", "--dtype", "float32")
ONE_CASE += ("--distribution", "normal", "--time-budget", "0.02")
STALE_COPY = "an untimed call on a copy of the inputs (set 1) differs from set 0's output"


@pytest.mark.parametrize(
    ("cheat", "reason"),
    [
        # the allocator may give set 1 the addresses of the freed storage that computed the perturbed truth: the
        # pointer memo then answers set 1's untimed call with that stale output, and is caught there instead
        ("memo-cheat", ("timed output differs from the op's untimed output on input set 1", STALE_COPY)),
        ("buffer-cheat", "timed output differs from the op's untimed output on input set 1"),
        ("shape-cache", "the op gave the same output for different inputs (input sets 0 and 1)"),
        ("input-writer", "input q was modified by the timed calls"),
        ("too-fast", "faster than this device can compute: "),
    ],
)
def test_a_cheat_is_an_invalid_timing_that_fails_the_case(
    harness_cli, cheat: str, reason: str | tuple[str, ...]
) -> None:
    run = harness_cli("run", "-b", cheat, "--plugin", CHEATS, *ONE_CASE)
    assert run.exit_code == 1, run.output
    (record,) = run.records
    timing = TimingRecord(record["timing"])
    assert not timing.valid and timing.invalid_reason.startswith(reason), timing.invalid_reason
    assert record["status"] == "failed"
    if cheat != "input-writer":  # its writes also show in its parity: the others' outputs judged were right
        assert record["parity"]["verdict"]["passed"] and record["reason"] == timing.invalid_reason
    assert timing.median_ns > 0  # the figure stays in the record for forensics


def test_too_fast_names_the_figure_and_the_ceiling(harness_cli) -> None:
    run = harness_cli("run", "-b", "too-fast", "--plugin", CHEATS, *ONE_CASE)
    (record,) = run.records
    reason = record["timing"]["invalid_reason"]
    assert "TFLOP/s against a" in reason and "TFLOP/s ceiling (x3 margin; a quick measurement of this CPU)" in reason


def test_honest_backends_are_never_flagged_on_a_ci_like_selection(harness_cli) -> None:
    run = harness_cli(
        "run", "-b", "torch-cpu,cpu-reference,ort-cpu,ascend-sim", "--time-oracles",
        "-w", "attention.prefill,attention.mla_decode,moe.layer,llm.llama3", "--preset", "tiny",
        "--dtype", "float32,bfloat16",
        "--distribution", "normal", "--time-budget", "0.02",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    timed = [r for r in run.records if r.get("timing")]
    assert {r["case"]["backend"] for r in timed} == {"torch-cpu", "cpu-reference", "ort-cpu", "ascend-sim"}
    assert {r["case"]["workload"] for r in timed} == {
        "attention.prefill",
        "attention.mla_decode",
        "moe.layer",
        "llm.llama3",
    }
    # ort-cpu's MLA reads a strided view of the latent cache (the values): it was once bound as a copy made at
    # bind time, so the timed calls computed on stale data after set 1 was rewritten
    assert any(r["case"]["backend"] == "ort-cpu" and r["case"]["op"] == "mla" for r in timed)
    flagged = [(r["case"], r["timing"]["invalid_reason"]) for r in timed if not r["timing"]["valid"]]
    assert flagged == []
    assert all(r["timing"]["input_sets"] >= 2 for r in timed)


def test_a_stored_calibration_is_held_with_a_half_again_margin() -> None:
    cal = Calibration("dev", "gpu", {"bfloat16": 100.0, "float32": 50.0}, copy_gbps=1000.0, copy_bytes=1 << 30)
    ceilings = [calibrated(cal)]
    assert violation(ceilings, flops=140e12, nbytes=0, seconds=1.0) is None  # the fastest mode, x1.5
    assert violation(ceilings, flops=160e12, nbytes=0, seconds=1.0) == (
        "faster than this device can compute: 160 TFLOP/s against a 100 TFLOP/s ceiling "
        "(x1.5 margin; harness calibrate (gpu))"
    )
    big, small = 2 << 30, 1 << 20  # a case larger than the calibration's copy cannot run from cache
    assert "GB/s against a 1e+03 GB/s ceiling (x1.5 margin" in violation(ceilings, 0, big, big / 1600e9)
    assert violation(ceilings, 0, small, small / (1.4 * CACHE_ALLOWANCE * 1000e9)) is None


def test_timing_records_without_the_fields_read_as_valid() -> None:
    old = TimingRecord({"median_ns": 5.0})
    assert old.valid and old.invalid_reason == ""
    bad = TimingRecord({"median_ns": 5.0, "valid": False, "invalid_reason": "input q was modified by the timed calls"})
    assert not bad.valid and bad.invalid_reason == "input q was modified by the timed calls"


def test_outputs_within_twice_the_budget_match_and_the_perturbed_set_differs() -> None:
    import torch

    from harness.parity import budget_for

    budget = budget_for("float32", 16)
    x = torch.randn(8, 16)
    assert mismatch([x], [x.clone()], budget) is None
    assert mismatch([x * (1 + 1.5 * budget.rel_l2)], [x], budget) is None  # honest run-to-run noise
    assert mismatch([x * (1 + 3 * budget.rel_l2)], [x], budget) is not None
    assert mismatch([perturbed(x)], [x], budget) is not None
    ids = torch.tensor([[3, 1, 2]])
    assert torch.equal(perturbed(ids), torch.tensor([[2, 3, 1]]))
    y = x.clone()
    before = checksum(y)
    y[3, 4] += 1e-3
    assert checksum(y) != before


def _honest_parity(records: list[dict]) -> dict[tuple[str, str], dict]:
    """Parity metrics and timing validity of the honest backends' cases, by (workload, backend)."""
    return {
        (r["case"]["workload"], r["case"]["backend"]): (r["status"], r["timing"]["valid"], r["parity"]["metrics"])
        for r in records
        if r["case"]["backend"] != "input-writer"
    }


def test_a_backend_writing_into_its_inputs_cannot_change_the_others_in_the_same_run(harness_cli) -> None:
    cases = ("-w", "attention.decode,attention.chunked_prefill", "--preset", "tiny", "--shape", "gqa")
    cases += ("--dtype", "float32", "--distribution", "normal", "--time-budget", "0.02", "--time-oracles")
    alone = harness_cli("run", "-b", "torch-cpu,cpu-reference", *cases)
    assert alone.exit_code == 0, alone.output
    for order in ("input-writer,torch-cpu,cpu-reference", "torch-cpu,cpu-reference,input-writer"):
        run = harness_cli("run", "-b", order, "--plugin", CHEATS, *cases)
        assert run.exit_code == 1, run.output
        writer = [r for r in run.records if r["case"]["backend"] == "input-writer"]
        assert len(writer) == 2
        assert all(r["timing"]["invalid_reason"] == "input q was modified by the timed calls" for r in writer)
        assert _honest_parity(run.records) == _honest_parity(alone.records)  # the same numbers, all passed, valid
