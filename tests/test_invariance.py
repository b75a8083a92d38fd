"""Batch invariance (`harness run --invariance`, harness.invariance): parts of a case run alone are compared with
the whole call; a planted backend whose output depends on the batch size passes parity but is reported as not
invariant, and fails only with --require-invariance."""

from __future__ import annotations

from harness.report_rows import summarize, table_cells
from harness.results import Record
from tests.conftest import plugin

TINY = ("--preset", "tiny", "--dtype", "float32", "--distribution", "normal", "--parity-only")
PLANTED = ("--plugin", plugin("batch_dependent"), "-w", "attention.prefill", "-b", "batch-dependent-cpu", *TINY)


def test_attention_and_moe_records_carry_the_section(harness_cli) -> None:
    run = harness_cli(
        "run", "-w", "attention.prefill,attention.decode,moe.layer", "-b", "torch-cpu,cpu-reference", *TINY,
        "--shape", "gqa,mixtral", "--invariance",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert len(run.records) == 6
    for r in run.records:
        section = r["parity"]["invariance"]
        assert isinstance(section["invariant"], bool), r["case"]["key"]
        assert section["rel_l2_alone"] < 1e-5 and section["rel_l2_whole"] < 1e-5
        names = [p["part"] for p in section["parts"]]
        if r["case"]["workload"] == "attention.prefill":
            assert names == ["row0", "row1", "chunk32"]  # each batch row alone, and a shorter causal chunk
        elif r["case"]["workload"] == "moe.layer":
            assert names == ["tokens0-32"]
        if r["case"]["backend"] == "cpu-reference":  # the float64 oracle computes each row on its own
            assert section["invariant"] is True and section["max_abs_diff"] == 0.0
    plain = harness_cli("run", "-w", "attention.decode", "-b", "torch-cpu", *TINY, "--shape", "gqa")
    assert "invariance" not in plain.records[0]["parity"]  # off by default: it costs extra calls


def test_llm_sequences_run_alone(harness_cli) -> None:
    run = harness_cli("run", "-w", "llm.llama3", "-b", "torch-cpu", *TINY, "--invariance")
    assert run.exit_code == 0, run.output
    section = run.records[0]["parity"]["invariance"]
    assert [p["part"] for p in section["parts"]] == [f"seq{b}" for b in range(len(section["parts"]))]
    assert len(section["parts"]) >= 2 and isinstance(section["invariant"], bool)


def test_a_batch_dependent_backend_is_reported_and_fails_only_when_required(harness_cli) -> None:
    reported = harness_cli("run", *PLANTED, "--invariance")
    assert reported.exit_code == 0, reported.output  # within the parity budget: reported, not failed
    assert {r["status"] for r in reported.records} == {"passed"}
    for r in reported.records:
        section = r["parity"]["invariance"]
        assert section["invariant"] is False and section["max_abs_diff"] > 0
        assert not next(p for p in section["parts"] if p["part"] == "row0")["bitwise_equal"]
    assert f"{len(reported.records)} of {len(reported.records)} cases not batch invariant" in reported.output
    rows = summarize(Record.from_dict(r) for r in reported.records)
    assert all(table_cells(row)[7].startswith("NO (") for row in rows)  # the report's batch-invariant column

    required = harness_cli("run", *PLANTED, "--require-invariance")
    assert required.exit_code == 1, required.output
    assert {r["status"] for r in required.records} == {"failed"}
    assert "not batch invariant: part row0" in required.records[0]["reason"]

    honest = harness_cli("run", "-w", "attention.prefill", "-b", "cpu-reference", *TINY, "--require-invariance")
    assert honest.exit_code == 0, honest.output
    assert all(r["parity"]["invariance"]["invariant"] for r in honest.records)
