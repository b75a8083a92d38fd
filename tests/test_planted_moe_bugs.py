"""Planted MoE bugs through --plugin: each fails with a reason naming the metric; a correct implementation
that sums in another order (dense, every expert on every token) passes."""

from __future__ import annotations

import pytest

from tests.conftest import FAULTS

pytestmark = pytest.mark.slow

MOE = ("-w", "moe.*", "--dtype", "float32,bfloat16", "--parity-only", "--plugin", FAULTS)


def statuses(run) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for r in run.records:
        out.setdefault((r["case"]["workload"], r["case"]["shape"]), set()).add(r["status"])
    return out


def reasons(run, workload: str, shape: str | None = None) -> list[str]:
    return [
        r["reason"]
        for r in run.records
        if r["case"]["workload"] == workload and (shape is None or r["case"]["shape"] == shape)
    ]


def test_weights_not_renormalized_fail_where_the_scheme_renormalizes(harness_cli) -> None:
    run = harness_cli("run", *MOE, "-b", "bug-moe-no-renorm")
    assert run.exit_code == 1
    got = statuses(run)
    for shape in ("mixtral", "qwen3-moe", "deepseek-v3"):
        assert got[("moe.layer", shape)] == {"failed"} and got[("moe.route", shape)] == {"failed"}
    assert got[("moe.layer", "qwen2-moe")] == {"passed"}  # Qwen2-MoE does not renormalize: no bug to see
    assert all("routing_weights.rel_l2" in reason for reason in reasons(run, "moe.layer", "mixtral"))


def test_deepseek_bias_in_output_weights_fails(harness_cli) -> None:
    run = harness_cli("run", *MOE, "-b", "bug-moe-bias-in-weights")
    got = statuses(run)
    assert got[("moe.layer", "deepseek-v3")] == {"failed"} and got[("moe.route", "deepseek-v3")] == {"failed"}
    assert got[("moe.layer", "mixtral")] == {"passed"}  # no bias in that scheme
    assert all("routing_weights.rel_l2" in reason for reason in reasons(run, "moe.layer", "deepseek-v3"))


def test_expert_ids_off_by_one_fail_as_unexplained_routing(harness_cli) -> None:
    run = harness_cli("run", *MOE, "-b", "bug-moe-ids-off-by-one")
    got = statuses(run)
    assert all(got[(w, s)] == {"failed"} for (w, s) in got if w in ("moe.layer", "moe.route"))
    assert all("routing_unexplained" in reason for reason in reasons(run, "moe.layer"))


def test_groups_ranked_by_max_fail_deepseek_routing(harness_cli) -> None:
    run = harness_cli("run", *MOE, "-b", "bug-moe-groups-by-max")
    got = statuses(run)
    assert got[("moe.layer", "deepseek-v3")] == {"failed"} and got[("moe.route", "deepseek-v3")] == {"failed"}
    assert got[("moe.route", "qwen3-moe")] == {"passed"}
    assert all("routing_unexplained" in reason for reason in reasons(run, "moe.route", "deepseek-v3"))


def test_dropped_token_fails_the_arithmetic_under_forced_routing(harness_cli) -> None:
    run = harness_cli("run", *MOE, "-b", "bug-moe-dropped-token")
    got = statuses(run)
    assert all(got[(w, s)] == {"failed"} for (w, s) in got if w in ("moe.layer", "moe.experts"))
    assert all("forced.worst_row_rel_l2" in reason for reason in reasons(run, "moe.layer"))
    assert all("worst_row_rel_l2" in reason for reason in reasons(run, "moe.experts"))


def test_dense_moe_in_another_order_passes(harness_cli) -> None:
    run = harness_cli("run", *MOE, "-b", "dense-moe", "--seeds", "0,1")
    assert run.exit_code == 0, run.output
    assert {s for v in statuses(run).values() for s in v} == {"passed"}
