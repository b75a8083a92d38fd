"""Planted-bug backends loaded through --plugin: the parity checks must catch each real mistake, and must not
fail a correct implementation that merely sums in another order."""

from __future__ import annotations

import pytest

from tests.conftest import FAULTS

pytestmark = pytest.mark.slow

DTYPES = "float32,bfloat16,float16"
ATTENTION = ("-w", "attention.*")


def verdicts(run, **match) -> dict[str, str]:
    out = {}
    for r in run.records:
        c = r["case"]
        if all(c[k] == v for k, v in match.items()):
            out[c["key"]] = r["status"]
    assert out, f"no records match {match}"
    return out


def test_top_left_causal_fails_chunked_prefill_passes_prefill(harness_cli) -> None:
    run = harness_cli(
        "run",
        "--plugin",
        FAULTS,
        "-b",
        "bug-top-left-causal",
        "-w",
        "attention.prefill,attention.chunked_prefill",
        "--dtype",
        DTYPES,
        "--parity-only",
    )
    assert run.exit_code == 1
    assert set(verdicts(run, workload="attention.chunked_prefill").values()) == {"failed"}
    assert set(verdicts(run, workload="attention.prefill").values()) == {"passed"}
    failed = next(r for r in run.records if r["status"] == "failed")
    assert "rel_l2" in failed["reason"] and "budget" in failed["reason"]


def test_wrong_gqa_head_mapping_fails_every_gqa_case(harness_cli) -> None:
    run = harness_cli("run", "--plugin", FAULTS, "-b", "bug-wrong-gqa", *ATTENTION, "--dtype", DTYPES, "--parity-only")
    assert run.exit_code == 1
    assert set(verdicts(run, shape="gqa").values()) == {"failed"}
    # With one kv head, h % 1 == h // Hq: the mapping cannot be wrong, and the verdict must not say it is.
    assert set(verdicts(run, shape="mqa").values()) == {"passed"}


def test_float16_softmax_without_max_subtraction_fails_on_stress_inputs(harness_cli) -> None:
    run = harness_cli(
        "run",
        "--plugin",
        FAULTS,
        "-b",
        "bug-naive-softmax",
        *ATTENTION,
        "--dtype",
        "float16",
        "--parity-only",
    )
    assert run.exit_code == 1
    assert set(verdicts(run, inputs="stress").values()) == {"failed"}
    # Normal inputs do not overflow: the stress distribution is what exposes the bug.
    assert set(verdicts(run, inputs="normal").values()) == {"passed"}
    reasons = [r["reason"] for r in run.records if r["status"] == "failed"]
    assert all("nonfinite" in reason for reason in reasons)


@pytest.mark.parametrize(("name", "backend"), [("zeros", "bug-zeros"), ("dropped_token", "bug-dropped-token")])
def test_zeros_and_dropped_tokens_fail_everywhere(harness_cli, name: str, backend: str) -> None:
    run = harness_cli("run", "--plugin", FAULTS, "-b", backend, *ATTENTION, "--dtype", DTYPES, "--parity-only")
    assert run.exit_code == 1
    assert set(verdicts(run).values()) == {"failed"}
    if name == "dropped_token":
        # One bad token per sequence: the per-row metric sees it whole even where the global norm dilutes it.
        assert all(r["parity"]["metrics"]["worst_row_rel_l2"] > 0.99 for r in run.records)


def test_blockwise_online_softmax_passes(harness_cli) -> None:
    run = harness_cli(
        "run",
        "--plugin",
        FAULTS,
        "-b",
        "blockwise-online",
        *ATTENTION,
        "--dtype",
        DTYPES,
        "--parity-only",
        "--seeds",
        "0,1",
    )
    assert run.exit_code == 0, run.output
    assert set(verdicts(run).values()) == {"passed"}
    # (contiguous workloads x 2 shapes + sliding_window's 4 more: decode, chunked + paged_decode's and
    # paged_prefill's 4 block-size shapes each + mla_decode's 4: decode, mtp, 2 paged) x dtypes x distributions x seeds
    assert len(run.records) == (4 * 2 + 4 + 4 + 4 + 4) * 3 * 2 * 2
