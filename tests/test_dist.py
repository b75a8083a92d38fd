"""Distributed workloads (dist.*): the expert-parallel split and combine on their own, a collective op at world
size 1 in one process against the single-device reference, and under torchrun with two gloo ranks the whole
`dist.*` family passing on three backends with its layout verdict recorded, while each planted fault fails
naming its metric and a correct but differently ordered expert-parallel layer (and a reduce_scatter + all_gather
tensor-parallel decoder) passes; `harness selftest` under torchrun runs the dist faults' checks."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import ops
from harness.collective import world_size
from harness.expert_parallel import ExpertParallel, even_bounds, owners
from harness.models.dist_moe import DistMoeShape, check_world
from harness.models.moe import TINY
from harness.op_types import Experts, MoeArgs, Routing
from harness.workload import WorkloadUnavailableError
from tests.torchrun_launch import TORCHRUN, run_group

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "faults" / "harness_faults" / "dist_faults.py"


def test_even_bounds_and_owners_partition_every_expert_once() -> None:
    assert even_bounds(10, 3) == [0, 4, 7, 10]
    assert even_bounds(2, 4) == [0, 1, 2, 2, 2]  # more ranks than items: the last ones hold none
    ids = torch.arange(10)
    assert owners(ids, even_bounds(10, 3)).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_plan_groups_by_rank_and_combine_restores_token_order() -> None:
    ids = torch.tensor([5, 0, 3, 1, 4, 2, 5, 0])  # [N] experts of the flat (token, slot) pairs
    dest = owners(ids, even_bounds(6, 2))  # experts 0-2 on rank 0, 3-5 on rank 1
    ep = ExpertParallel()
    order, send = ep.plan(ids, dest, 2)
    assert send == [4, 4] and dest[order].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    rows = torch.arange(8.0)[:, None]  # [N, 1] a row per pair, tagged by its pair index
    back = rows[order]  # what comes back, in send order
    assert torch.equal(ep.combine(back, order), rows)  # token order again
    assert not torch.equal(back, rows)  # the send order is not the token order: combining it as is would be wrong


def test_moe_ep_at_world_one_matches_the_reference_in_one_process() -> None:
    from harness.backends.torch_cpu import TorchCpu
    from harness.collective import group_for
    from harness.models.moe import _weights

    shape = DistMoeShape(t=16, dims=TINY["deepseek-v3"])
    w = _weights(shape, torch.float32, 0, "normal")
    backend = TorchCpu()
    group = group_for(backend)  # a gloo world of one, made in-process
    assert world_size() == 1
    experts = Experts(w["w_gate"], w["w_up"], w["w_down"])
    out, routing = backend.moe_ep(
        w["x"], w["router_w"], *experts.tensors(), shape.dims.spec, bias=w["bias"], group=group
    )
    forced = Routing(routing.weights.float(), routing.ids)
    ref = ops.moe(w["x"], w["router_w"], *experts.tensors(), shape.dims.spec, bias=w["bias"], routing=forced)[0]
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-5
    args = MoeArgs(w["x"], w["router_w"], experts, shape.dims.spec, w["bias"], None, forced)
    again, given = ExpertParallel().run(backend, args, group)
    assert given is forced and torch.equal(again, out)


def test_a_shape_made_for_another_world_size_is_a_skip_naming_the_size() -> None:
    check_world("any", 0)
    with pytest.raises(WorkloadUnavailableError, match="needs a world of 8 ranks"):
        check_world("dist.moe_ep real/deepseek-v3-ep8", 8)


def test_llm_tp_at_world_one_matches_the_float64_model_and_its_reference_is_the_unsharded_model() -> None:
    from harness.backends.torch_cpu import TorchCpu
    from harness.collective import group_for
    from harness.models.dist_llm import DistLlmShape, _weights, llama3_dims, reference_logits
    from harness.tensor_parallel_lm import DecoderSpec, DecoderWeights, TensorParallelDecoder

    shape = DistLlmShape(llama3_dims("tiny"), 2, 8)
    w = _weights(shape, torch.float32, 0)
    ids, weights = w.pop("input_ids"), DecoderWeights(**w)
    spec = DecoderSpec(shape.dims.heads, shape.dims.kv_heads)
    backend = TorchCpu()
    out = backend.llm_tp(ids, *w.values(), heads=spec.heads, kv_heads=spec.kv_heads, group=group_for(backend))
    ref = reference_logits(ids, weights, spec)
    assert out.shape == (2, 8, 256) and out.dtype == torch.float32
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-5
    # a causal model: the logits of position 0 do not depend on the later tokens
    changed = ids.clone()
    changed[:, 1:] = (changed[:, 1:] + 1) % 256
    assert torch.allclose(reference_logits(changed, weights, spec)[:, 0], ref[:, 0])
    assert not torch.allclose(reference_logits(changed, weights, spec)[:, 1], ref[:, 1])

    class NoReduce(TensorParallelDecoder):  # at world 1 the reduce is the identity: the same logits
        def reduce(self, partial, group, where):
            return partial

    again = NoReduce().run(backend, ids, weights, spec, group_for(backend))
    assert torch.allclose(again, out, atol=1e-6)


def test_rank_fingerprints_tell_one_changed_bit_and_name_the_differing_ranks() -> None:
    from harness.rank_agreement import differing, failure_reason, fingerprint

    out = torch.randn(3, 5, dtype=torch.bfloat16)
    flipped = out.clone()
    flipped.view(torch.int16)[1, 2] ^= 1  # the lowest mantissa bit of one element
    same = fingerprint({"out": out.clone()})
    messages = [fingerprint({"out": out}), same, fingerprint({"out": flipped}), fingerprint(None, "error: boom")]
    assert differing(messages) == [2, 3]
    reason = failure_reason(messages, [2, 3])
    assert "rank 2's output differs from rank 0's" in reason and "rank 3 produced no output (error: boom)" in reason
    assert differing([fingerprint({"out": torch.zeros(0)}), fingerprint({"out": torch.zeros(0)})]) == []


def test_dist_checks_skip_in_one_process_naming_the_torchrun_command() -> None:
    from harness.selftest import Check, _too_few_ranks

    check = Check("x", "torch-cpu", "passes", ("dist.llm_tp",), min_world=2)
    assert _too_few_ranks(check) == "needs 2+ ranks: torchrun --nproc-per-node 2 -m harness selftest"
    assert _too_few_ranks(Check("y", "torch-cpu", "passes", ("dist.llm_tp",))) == ""


def test_the_layout_at_world_size_one_is_recorded_unchecked_and_reported_as_no_pass(tmp_path: Path) -> None:
    out = tmp_path / "one.jsonl"
    harness = [sys.executable, "-m", "harness"]
    run = subprocess.run([*harness, "run", "-w", "dist.attention_tp", "--preset", "tiny", "-b", "torch-cpu",
                          "--parity-only", "--out", str(out)], check=False, capture_output=True, text=True,
                         env=_env(tmp_path))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    layouts = [r["parity"]["layout"] for r in _records(out)]
    assert layouts and all(lay["checked"] is False and lay["world_size"] == 1 for lay in layouts)
    assert not any({"bitwise_equal", "max_abs_diff", "within_budget", "rel_l2_single"} & set(lay) for lay in layouts)
    report = subprocess.run([*harness, "report", str(out)], check=False, capture_output=True, text=True,
                            env=_env(tmp_path))  # fmt: skip
    assert "not checked (world size 1)" in report.stdout and "1 vs 1" not in report.stdout, report.stdout


# ----- under torchrun: two gloo ranks -----


def _env(tmp: Path) -> dict[str, str]:
    """The subprocess environment; while the installed metadata predates the `dist` workload entry point (the
    shared venv until it is reinstalled), a stand-in distribution on PYTHONPATH declares it."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    paths = [str(ROOT), str(ROOT / "faults")]
    if "dist" not in {ep.name for ep in importlib.metadata.entry_points(group="harness.workloads")}:
        info = tmp / "ep" / "harness_dist_standin-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-dist-standin\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[harness.workloads]\ndist = harness.models.dist_workloads:workloads\n")
        paths.append(str(tmp / "ep"))
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")])))
    return env


def _torchrun(tmp: Path, *args: str, timeout: float = 150, cmd: str = "run") -> subprocess.CompletedProcess[str]:
    """`harness CMD ARGS` under torchrun with two ranks; the whole process group is killed on a timeout."""
    command = [*TORCHRUN, "--nproc-per-node", "2", "-m", "harness", cmd, *args]
    return run_group(command, _env(tmp), timeout)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_dist_workloads_pass_on_two_ranks_with_the_layout_recorded(tmp_path: Path) -> None:
    out = tmp_path / "dist.jsonl"
    run = _torchrun(tmp_path, "-w", "dist.*", "--preset", "tiny", "-b", "cpu-reference,torch-cpu,ascend-sim",
                    "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    records = _records(out)
    assert {r["case"]["workload"] for r in records} == {"dist.moe_ep", "dist.attention_tp", "dist.llm_tp"}
    assert all(r["status"] == "passed" for r in records)
    layouts = [r["parity"]["layout"] for r in records]
    assert all(lay["world_size"] == 2 and lay["checked"] and lay["within_budget"] for lay in layouts)
    assert all({"bitwise_equal", "max_abs_diff", "rel_l2_world", "rel_l2_single"} <= set(lay) for lay in layouts)
    assert all(lay["ranks_agree"] is True and lay["ranks_differing"] == [] for lay in layouts)
    assert len({r["case"]["key"] for r in records}) == len(records)  # one record per case, whichever rank ran it


@pytest.mark.slow
def test_isolate_under_torchrun_still_runs_dist_cases_across_the_ranks(tmp_path: Path) -> None:
    out = tmp_path / "iso.jsonl"
    select = ("-w", "dist.attention_tp", "--preset", "tiny", "--dtype", "float32", "--distribution", "normal")
    run = _torchrun(tmp_path, *select, "--seeds", "0", "-b", "torch-cpu", "--isolate", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    records = _records(out)
    # a child process per case would be a gloo world of one: the collective never crossed ranks
    assert records and all(r["parity"]["layout"]["world_size"] == 2 for r in records)


@pytest.mark.slow
def test_planted_distributed_faults_fail_and_a_different_correct_order_passes(tmp_path: Path) -> None:
    out = tmp_path / "faults.jsonl"
    backends = "bug-ep-split-off,bug-ep-dispatch-order,ep-expert-sorted,bug-tp-missing-gather,bug-tp-missing-reduce"
    backends += ",tp-reduce-scatter"
    run = _torchrun(tmp_path, "-w", "dist.*", "--preset", "tiny", "--dtype", "float32", "--distribution", "normal",
                    "-b", backends, "--plugin", str(FAULTS), "--out", str(out))  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    by = {}
    for r in _records(out):
        by.setdefault((r["case"]["backend"], r["case"]["workload"]), []).append(r)
    for fault in ("bug-ep-split-off", "bug-ep-dispatch-order"):
        cases = by[(fault, "dist.moe_ep")]
        assert all(r["status"] == "failed" and "rel_l2" in r["reason"] for r in cases), fault
        assert all(not r["parity"]["layout"]["within_budget"] for r in cases)  # worse on 2 ranks than on 1
    gathered = [r for r in by[("bug-tp-missing-gather", "dist.attention_tp")] if r["case"]["shape"].startswith("gqa")]
    unreduced = by[("bug-tp-missing-reduce", "dist.llm_tp")]
    assert unreduced and all(r["status"] == "failed" and "rel_l2" in r["reason"] for r in unreduced)
    assert all(r["status"] == "passed" for r in by[("tp-reduce-scatter", "dist.llm_tp")])
    assert gathered and all(r["status"] == "failed" and "rel_l2" in r["reason"] for r in gathered)
    assert all(r["status"] == "passed" for r in by[("ep-expert-sorted", "dist.moe_ep")])


@pytest.mark.slow
def test_an_output_corrupted_or_missing_on_rank_one_alone_fails_naming_the_rank(tmp_path: Path) -> None:
    out = tmp_path / "corrupt.jsonl"
    plugin = ROOT / "tests" / "plugins" / "rank_one_corrupt.py"
    # --no-determinism: rank 0's re-runs of the op would wait for rank 1, which left the case when it raised
    run = _torchrun(tmp_path, "-w", "dist.attention_tp", "--preset", "tiny", "--dtype", "float32", "--no-determinism",
                    "-b", "torch-cpu,rank-one-corrupt,rank-one-raises", "--plugin", str(plugin), "--out", str(out),
                    timeout=90)  # fmt: skip
    assert run.returncode == 1 and "exitcode: 3" in run.stderr, run.stderr[-3000:]  # an error: 3 beats 1
    by: dict[str, list[dict]] = {}
    for r in _records(out):
        by.setdefault(r["case"]["backend"], []).append(r)
    assert by["torch-cpu"] and all(r["status"] == "passed" for r in by["torch-cpu"])
    assert all(r["parity"]["layout"]["ranks_agree"] is True for r in by["torch-cpu"])
    corrupt = by["rank-one-corrupt"]
    assert corrupt and all(r["status"] == "failed" for r in corrupt)
    assert all("rank 1's output differs from rank 0's" in r["reason"] for r in corrupt)
    assert all(r["parity"]["verdict"]["passed"] for r in corrupt)  # rank 0's own copy is right
    assert all(r["parity"]["layout"]["ranks_differing"] == [1] for r in corrupt)
    raised = by["rank-one-raises"]  # rank 1 still reached the exchange (no deadlock) and said why it had nothing
    assert raised and all(r["status"] == "error" for r in raised)
    assert all("rank 1 produced no output (error: RuntimeError: planted" in r["reason"] for r in raised)


@pytest.mark.slow
def test_an_error_that_grows_with_the_world_size_fails_naming_the_layout(tmp_path: Path) -> None:
    out = tmp_path / "drift.jsonl"
    plugin = ROOT / "tests" / "plugins" / "layout_drift.py"
    run = _torchrun(tmp_path, "-w", "dist.moe_ep", "--preset", "tiny", "--dtype", "float32", "--distribution",
                    "normal", "-b", "layout-drift", "--plugin", str(plugin), "--out", str(out))  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    records = _records(out)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) >= 3 and all(r["reason"].startswith("layout: world size 2 vs 1") for r in failed)
    assert all(r["parity"]["verdict"]["passed"] for r in records)  # inside the parity budget: the layout caught it
    report = subprocess.run(
        [sys.executable, "-m", "harness", "report", str(out)],
        check=False,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
    )
    assert "layout N vs 1" in report.stdout and "2 vs 1: FAIL" in report.stdout


@pytest.mark.slow
def test_selftest_under_torchrun_runs_the_dist_checks_and_they_hold(tmp_path: Path) -> None:
    out = tmp_path / "selftest.jsonl"
    run = _torchrun(tmp_path, "--faults", "harness_faults.dist_checks", "--out", str(out), cmd="selftest")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "9 of 9 checks hold" in run.stderr and "skipped" not in run.stderr
    records = _records(out)  # rank 0's alone: one record per case
    assert len({r["case"]["key"] for r in records}) == len(records)
    assert {r["case"]["backend"] for r in records} >= {"bug-tp-missing-reduce", "tp-reduce-scatter", "ascend-sim"}


def test_saved_decode_inputs_fit_dist_attention_tp_against_dir(harness_cli, tmp_path: Path) -> None:
    select = ("-w", "dist.attention_tp", "--preset", "tiny", "--shape", "gqa-decode,gqa-prefill", "--dtype",
              "float32", "--distribution", "normal", "--seeds", "0", "--parity-only")  # fmt: skip
    saved = harness_cli("run", *select, "-b", "torch-cpu", "--save-outputs", str(tmp_path / "src"))
    assert saved.exit_code == 0 and len(saved.records) == 2
    port = harness_cli("run", *select, "-b", "cpu-reference", "--against", str(tmp_path / "src"))
    assert [r["status"] for r in port.records] == ["passed", "passed"], [r["reason"] for r in port.records]
