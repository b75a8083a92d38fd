"""Timing cheats: the planted ones behave as their cheat says, the selftest judges timing verdicts (a cheat is
caught only by an invalid timing naming the right check; an honest backend's timings must all be valid), and the
CUDA side-stream verdict flags work outside the timed stream from its numbers alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from harness import selftest
from harness.backend import default_registry
from harness.backends.cuda.stream_check import OUTSIDE_SLACK_NS, judge_streams
from harness.backends.cuda.timing import CudaTimer
from harness.backends.torch_cpu import TorchCpu
from harness.plugins import import_plugin
from harness.results import Record, ResultWriter
from harness.selftest import Check, FaultPlugin, judge_check, run_selftest
from harness.timing import TimingConfig
from tests.conftest import FAULT_CHECKS

CHEATS = str(Path(FAULT_CHECKS).with_name("cheats.py"))
KEY = "attention.decode/tiny/gqa/float32/normal/seed0@cheat"
MEMO_CHECK = Check("memo", "cheat", "timing_invalid", ("attention.decode",), reasons=("faster than this device",))
HONEST_TIMED = Check("honest", "torch-cpu", "passes", ("attention.decode",), timed=True)


def cheats() -> Any:
    return import_plugin(CHEATS)


def attention_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 1, 32, generator=g)  # [B, Hq, 1, D]
    k = torch.randn(2, 2, 64, 32, generator=g)  # [B, Hkv, Skv, D]
    v = torch.randn(2, 2, 64, 32, generator=g)
    return q, k, v, torch.tensor([64, 23])


def record(status: str = "failed", timing: dict[str, Any] | None = None, **more: Any) -> Record:
    data = {"schema_version": 2, "run_id": "r", "time_utc": "t", "case": {"key": KEY}, "status": status}
    return Record.from_dict({**data, "reason": "", **({"timing": timing} if timing is not None else {}), **more})


def invalid(reason: str) -> dict[str, Any]:
    return {"median_ns": 900.0, "valid": False, "invalid_reason": reason}


# ----- the cheats themselves -----


def test_the_pointer_memo_returns_its_cached_tensor_for_the_same_tensors_and_recomputes_for_new_ones() -> None:
    memo = cheats().PointerMemo()
    q, k, v, lens = attention_inputs(0)
    first = memo.attention(q, k, v, causal=True, kv_lens=lens)
    q.normal_()  # new contents at the same address: the memo does not look
    assert memo.attention(q, k, v, causal=True, kv_lens=lens) is first
    fresh = memo.attention(q.clone(), k, v, causal=True, kv_lens=lens)  # another address: computed
    assert fresh is not first
    assert torch.equal(fresh, TorchCpu().attention(q, k, v, causal=True, kv_lens=lens))


def test_the_stale_output_buffer_answers_new_inputs_of_the_same_shape_with_the_first_output() -> None:
    stale, honest = cheats().StaleOutputBuffer(), TorchCpu()
    q, k, v, lens = attention_inputs(0)
    first = stale.attention(q, k, v, causal=True, kv_lens=lens)
    assert torch.equal(first, honest.attention(q, k, v, causal=True, kv_lens=lens))  # parity sees a right answer
    q2, k2, v2, _ = attention_inputs(1)
    assert stale.attention(q2, k2, v2, causal=True, kv_lens=lens) is first
    assert not torch.allclose(first, honest.attention(q2, k2, v2, causal=True, kv_lens=lens))


def test_the_input_writer_gives_right_outputs_and_changes_its_key_input_past_the_lengths() -> None:
    writer, honest = cheats().WritesIntoInput(), TorchCpu()
    q, k, v, lens = attention_inputs(0)
    before = k.clone()
    expected = honest.attention(q, k, v, causal=True, kv_lens=lens)
    for _ in range(2):
        assert torch.equal(writer.attention(q, k, v, causal=True, kv_lens=lens), expected)
    assert torch.equal(k[:, :, :23], before[:, :, :23]) and torch.equal(k[0], before[0])  # what any query sees
    assert torch.allclose(k[1, :, 23:], before[1, :, 23:] + 2)  # the cheat: changed in place, every call


def test_the_side_stream_cheat_is_a_cuda_backend_registered_by_the_fault_plugin() -> None:
    registry = default_registry([CHEATS])
    cls = registry.get("cheat-side-stream")
    assert cls.device == "cuda" and cls.timer is not TorchCpu.timer  # timed by CudaTimer, where the check lives
    assert {"cheat-pointer-memo", "cheat-stale-output", "cheat-writes-input"} <= set(registry.names())


# ----- the selftest's judging -----


def test_check_declarations_are_validated() -> None:
    with pytest.raises(ValueError, match="expect 'cheats'"):
        Check("x", "torch-cpu", "cheats", ("attention.decode",))
    with pytest.raises(ValueError, match="names the `reasons`"):
        Check("x", "torch-cpu", "timing_invalid", ("attention.decode",))
    assert MEMO_CHECK.is_timed and HONEST_TIMED.is_timed and not Check("x", "b", "passes", ("w",)).is_timed


def test_a_timing_cheat_is_caught_only_by_invalid_timings_that_name_its_check() -> None:
    reason = "faster than this device can compute: 326 TFLOP/s against a 0.5 TFLOP/s ceiling (x1.5 margin)"
    caught = judge_check(MEMO_CHECK, [record(timing=invalid(reason)), record(timing=invalid(reason))])
    assert caught.ok and caught.good == 2 and caught.metrics == ("timing: faster than this device",)
    listed = invalid("timed output differs from the op's untimed output on input set 1") | {
        "problems": ["timed output differs from the op's untimed output on input set 1", reason]
    }  # the first reason is another check's; the list of every check that failed names this one
    assert judge_check(MEMO_CHECK, [record(timing=listed)]).ok

    cases = {
        "with a valid timing": record("passed", {"median_ns": 900.0, "valid": True, "invalid_reason": ""}),
        "from before the verdict": record("passed", {"median_ns": 900.0}),  # no `valid`: read as valid
        "for another reason": record(timing=invalid("input q was modified by the timed calls")),
        "not failed": record("passed", invalid(reason)),
        "not timed": record("failed"),  # parity caught it, or it was never timed: not this check's proof
    }
    for why, slipped in cases.items():
        outcome = judge_check(MEMO_CHECK, [record(timing=invalid(reason)), slipped])
        assert not outcome.ok and outcome.good == 1, why
        assert outcome.problem.startswith("1 of 2 slipped through"), (why, outcome.problem)


def test_an_honest_timed_backend_passes_only_with_every_timing_valid() -> None:
    valid = {"median_ns": 5e4, "valid": True, "invalid_reason": ""}
    assert judge_check(HONEST_TIMED, [record("passed", valid), record("passed", {"median_ns": 5e4})]).ok
    flagged = judge_check(HONEST_TIMED, [record("passed", valid), record("passed", invalid("timed output differs"))])
    assert not flagged.ok and "falsely failed" in flagged.problem and "timed output differs" in flagged.problem
    variant = record("passed", valid, timing_variants={"decode": invalid("faster than this device can compute")})
    assert "timing_variants.decode invalid" in judge_check(HONEST_TIMED, [variant]).problem
    assert "was not timed" in judge_check(HONEST_TIMED, [record("passed")]).problem
    untimed = Check("honest, parity only", "torch-cpu", "passes", ("attention.decode",))
    assert judge_check(untimed, [record("passed")]).ok


def test_a_check_whose_device_is_missing_is_skipped_and_a_missing_cpu_backend_is_not(tmp_path: Path) -> None:
    registry = default_registry([CHEATS])
    if registry.probe("cuda").available:
        pytest.skip("a GPU is here: the cuda checks run")
    gpu = Check("honest cuda", "cuda", "passes", ("attention.decode",), ("float16",), timed=True)
    with ResultWriter(tmp_path / "r.jsonl") as writer:
        [outcome] = run_selftest(writer, plugins=[FaultPlugin("test", (gpu,), CHEATS)])
    assert outcome.ok and outcome.cases == 0 and "cuda unavailable here" in outcome.skipped
    cpu = Check("x", "torch-cpu", "passes", ("attention.decode",))
    assert selftest._unavailable_device(registry, cpu) == ""  # a CPU backend always runs (or fails)


def test_the_cheats_run_through_the_ordinary_runner_and_are_judged_on_their_timings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Parity passes for every cheat (only the timed path can catch them); once the timed path writes its verdict
    (timing.valid), every cheat must be caught and the honest torch-cpu check must hold."""
    [plugin] = selftest.load_fault_plugins((FAULT_CHECKS,))
    cpu_cheats = tuple(c for c in plugin.checks if c.expect == "timing_invalid" and c.backend != "cheat-side-stream")
    honest = tuple(c for c in plugin.checks if c.backend == "torch-cpu" and c.timed)
    assert {c.backend for c in cpu_cheats} == {"cheat-pointer-memo", "cheat-stale-output", "cheat-writes-input"}
    with caplog.at_level("WARNING"), ResultWriter(tmp_path / "r.jsonl") as writer:
        outcomes = run_selftest(writer, plugins=[FaultPlugin("test", cpu_cheats + honest, plugin.backends)])
    noise = [r.getMessage() for r in caplog.records if "timing invalid" in r.getMessage()]
    assert not noise, noise  # a caught cheat's check line says it: no warning besides
    records = [
        Record.from_dict(__import__("json").loads(line)) for line in (tmp_path / "r.jsonl").read_text().splitlines()
    ]
    assert records and all(r.timing is not None for r in records)
    assert all(r.parity is not None and r.parity.verdict.passed for r in records)  # parity alone is fooled
    assert all(o.ok for o in outcomes if o.check.expect == "passes"), [o.problem for o in outcomes]
    if not any("valid" in r.timing.data for r in records):  # type: ignore[union-attr]
        pytest.skip("the timed path writes no timing.valid yet (issue 23's timing checks are not merged)")
    assert all(o.ok for o in outcomes), [o.problem for o in outcomes if not o.ok]


# ----- the CUDA side-stream verdict, from numbers -----


def test_an_honest_stream_timing_is_valid_even_with_slow_synchronizes_now_and_then() -> None:
    events = [1e6] * 20  # 1 ms a sample on the timed stream
    walls = [e + 40e3 for e in events]  # a synchronize's latency on top
    walls[3] = walls[11] = 9e6  # two preempted samples
    verdict = judge_streams(events, walls)
    assert verdict.reason == "" and verdict.samples == 20 and verdict.outside == 2
    tiny = judge_streams([10e3] * 10, [10e3 + OUTSIDE_SLACK_NS * 0.9] * 10)  # 20x, but within a sync's slack
    assert tiny.reason == "" and tiny.outside == 0


def test_work_left_on_a_side_stream_is_flagged_with_the_figures() -> None:
    events = [50e3] * 10  # the launches only
    walls = [5e6] * 9 + [60e3]  # the side stream's work, seen by the device-wide synchronize
    verdict = judge_streams(events, walls)
    assert verdict.reason.startswith("work outside the timed stream: a device-wide synchronize took 100x")
    assert "9 of 10 samples" in verdict.reason and verdict.to_record()["median_wall_over_events"] == 100.0
    assert judge_streams(events[:2], walls[:2]).reason == ""  # too few samples for a verdict
    with pytest.raises(ValueError):
        judge_streams(events, walls[:3])


def test_the_cuda_timer_leaves_the_verdict_in_its_notes_for_the_timing_section() -> None:
    timer = CudaTimer(TimingConfig(), 0)  # no cold cache: constructing it touches no GPU
    for _ in range(50):
        timer._judge_streams(30e3, 300e3, calls=1)  # warm-up samples: one call each
    for _ in range(4):
        timer._judge_streams(1e6, 1.05e6, calls=20)  # the measurement: honest
    assert "invalid_reason" not in timer.notes and timer.notes["stream_check"]["samples"] == 4
    for _ in range(20):
        timer._judge_streams(1e6, 8e6, calls=20)
    assert timer.notes["invalid_reason"].startswith("work outside the timed stream")


def test_a_planted_cheats_expected_warnings_are_quiet_and_an_honest_backends_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """selftest's line for a cheat already says its timing was flagged: the runner's warning for it is noise, but
    an honest backend's invalid timing is news and must still be logged."""
    import logging

    log = logging.getLogger("harness.case_timing")
    cheat = Check("memo", "cheat-pointer-memo", "timing_invalid", ("attention.*",), reasons=("differs",))
    honest = Check("honest", "torch-cpu", "passes", ("attention.*",), timed=True)
    with caplog.at_level(logging.WARNING):
        with selftest._expected_warnings(cheat):
            log.warning("timing invalid: the cheat")
        with selftest._expected_warnings(honest):
            log.warning("timing invalid: the honest one")
        log.warning("timing invalid: after the cheat's check")
    messages = [r.getMessage() for r in caplog.records]
    assert "timing invalid: the cheat" not in messages
    assert "timing invalid: the honest one" in messages and "timing invalid: after the cheat's check" in messages
