"""Timing variants (LLM decode) are checked as the main timed op is (issue 23): a decode step that returns
cached logits or writes into its KV cache makes the variant invalid, naming it, and fails the case; honest
backends' decode timings stay valid, rotated over two prompts."""

from __future__ import annotations

import pytest

from harness.results import TimingRecord
from tests.conftest import plugin

pytest.importorskip("transformers")

CHEATS = plugin("cheats")
ONE_LLM = ("-w", "llm.llama3", "--preset", "tiny", "--dtype", "float32", "--time-budget", "0.02")


@pytest.mark.parametrize(
    ("cheat", "reason"),
    [
        ("decode-memo", "decode timing: timed output differs from the op's untimed output on input set 1"),
        ("kv-writer", "decode timing: input KV cache layer 0 keys was modified by the timed calls"),
    ],
)
def test_a_decode_cheat_makes_the_decode_timing_invalid_and_fails_the_case(
    harness_cli, cheat: str, reason: str
) -> None:
    run = harness_cli("run", "-b", cheat, "--plugin", CHEATS, *ONE_LLM)
    assert run.exit_code == 1, run.output
    (record,) = run.records
    decode = TimingRecord(record["timing_variants"]["decode"])
    assert not decode.valid and decode.invalid_reason.startswith(reason), decode.invalid_reason
    assert decode.data["input_sets"] == 2 and decode.median_ns > 0
    assert record["status"] == "failed"
    assert TimingRecord(record["timing"]).valid  # prefill does not cheat: the variant alone is named
    if cheat == "decode-memo":  # its parity decode is honest (each step a new length): only the timing fails it
        assert record["parity"]["verdict"]["passed"] and record["reason"] == decode.invalid_reason


def test_honest_decode_timings_are_valid_on_every_cpu_backend(harness_cli) -> None:
    run = harness_cli("run", "-b", "torch-cpu,cpu-reference,ort-cpu,ascend-sim", "--time-oracles", *ONE_LLM)
    assert run.exit_code == 0, run.output
    decodes = {r["case"]["backend"]: r["timing_variants"]["decode"] for r in run.records if r.get("timing_variants")}
    assert set(decodes) == {"torch-cpu", "cpu-reference", "ort-cpu", "ascend-sim"}
    assert {b: d["invalid_reason"] for b, d in decodes.items() if not d["valid"]} == {}
    assert all(d["input_sets"] == 2 and d["problems"] == [] for d in decodes.values())
