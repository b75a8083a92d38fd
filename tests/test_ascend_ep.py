"""The Ascend adapter's expert-parallel path on torch_npu's fused dispatch / combine (backends/ascend/fused_ep.py)
and the simulator's model of the pair (backends/ascend/sim_moe_distribute.py): the simulated ops at world size 1
against a direct computation, documented-invalid calls refused, the adapter's refusals by SoC, the layer in one
process against the float64 reference, and under torchrun on two gloo ranks `dist.moe_ep` passing on the fused
path in bfloat16 / float16 while float32 falls back with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness import ops
from harness.backend import default_registry
from harness.backends.ascend import fused_ep
from harness.backends.ascend.sim_moe_distribute import (
    DistributeArgumentError,
    comm_name,
    npu_moe_distribute_combine,
    npu_moe_distribute_dispatch,
)
from harness.collective import group_for
from harness.models.dist_moe import DistMoeShape
from harness.models.moe import TINY, _weights
from harness.op_types import Experts, MoeArgs, Routing
from tests.test_dist import _records, _torchrun

FUSED = "npu_moe_distribute_dispatch -> npu_grouped_matmul -> npu_moe_distribute_combine"
E, H, BS = 8, 64, 6


@pytest.fixture(scope="module")
def backend():  # the ascend-sim adapter
    return default_registry().create("ascend-sim")


@pytest.fixture(scope="module")
def name(backend) -> str:
    return backend.hccl_comm_name(group_for(backend))  # a gloo world of one, registered under a comm name


def _ids(bs: int = BS) -> torch.Tensor:
    """[bs, 3] int32: distinct experts per row, out of token order so that expert order differs from it."""
    return torch.tensor([[(5 * t + j * 3) % E for j in range(3)] for t in range(bs)], dtype=torch.int32)


def test_dispatch_groups_rows_by_expert_and_combine_restores_token_order(name: str) -> None:
    x = torch.randn(BS, H).to(torch.bfloat16)
    ids = _ids()
    expand_x, scales, expand_idx, nums, recv, _, _ = npu_moe_distribute_dispatch(x, ids, name, 1, 0, E)
    flat = ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=E)
    assert scales is None and nums.dtype == torch.int64 and torch.equal(nums, counts)
    assert recv.dtype == torch.int32 and recv.tolist() == counts.cumsum(0).tolist()
    n = int(counts.sum())
    assert expand_x.shape[0] >= BS * 3  # A >= BS * world * min(local_expert_num, K)
    direct = torch.cat([x[(ids == e).any(dim=1)] for e in range(E)])  # per expert, its tokens in token order
    assert torch.equal(expand_x[:n], direct)
    # each expert scales its rows differently, so a row combined under the wrong (token, slot) is visible
    tag = torch.repeat_interleave(torch.arange(1.0, E + 1), counts)[:, None]  # [n, 1] (expert + 1) per row
    y = torch.cat([expand_x[:n].float() * tag, expand_x[n:].float()]).to(torch.bfloat16)
    w = torch.rand(BS, 3)
    out = npu_moe_distribute_combine(y, ids, expand_idx, recv, w, name, 1, 0, E)
    want = ((w * (ids.float() + 1)).sum(dim=1, keepdim=True) * x.float()).to(torch.bfloat16)  # [BS, H]
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), want.float(), rtol=2e-2, atol=1e-2)
    nums0 = npu_moe_distribute_dispatch(x, ids, name, 1, 0, E, expert_token_nums_type=0)[3]
    assert torch.equal(nums0, counts.cumsum(0))  # type 0: prefix sums


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"x": torch.randn(BS, H)}, "bfloat16 or float16"),
        ({"x": torch.randn(BS, 48).half()}, "multiple of 32"),
        ({"expert_ids": torch.tensor([[1, 1, 2]] * BS, dtype=torch.int32)}, "distinct"),
        ({"expert_ids": _ids().long()}, "int32"),
        ({"expert_ids": _ids() + E}, r"\[0, moe_expert_num\)"),
        ({"moe_expert_num": 513, "expert_ids": _ids()}, r"\[1, 512\]"),
        ({"ep_world_size": 2}, "ep_world_size"),
        ({"ep_rank_id": 1}, "ep_rank_id"),
        ({"group_ep": ""}, r"\[1, 128\)"),
        ({"group_ep": "no_such_comm"}, "names no communicator"),
        ({"global_bs": BS + 1}, "global_bs"),
        ({"x": torch.randn(513, H).half(), "expert_ids": _ids(513)}, "BS <= 512"),
    ],
)
def test_dispatch_refuses_what_the_docs_rule_out(name: str, change: dict, rule: str) -> None:
    call = {"x": torch.randn(BS, H).half(), "expert_ids": _ids(), "group_ep": name, "ep_world_size": 1,
            "ep_rank_id": 0, "moe_expert_num": E, **change}  # fmt: skip
    with pytest.raises(DistributeArgumentError, match=rule):
        npu_moe_distribute_dispatch(**call)


def test_combine_refuses_counts_that_are_not_dispatchs(name: str) -> None:
    x, ids = torch.randn(BS, H).half(), _ids()
    expand_x, _, idx, _, recv, _, _ = npu_moe_distribute_dispatch(x, ids, name, 1, 0, E)
    w = torch.rand(BS, 3)
    with pytest.raises(DistributeArgumentError, match="ep_send_counts"):
        npu_moe_distribute_combine(expand_x, ids, idx, recv[:-1], w, name, 1, 0, E)
    with pytest.raises(DistributeArgumentError, match="expert_scales"):
        npu_moe_distribute_combine(expand_x, ids, idx, recv, w.half(), name, 1, 0, E)
    assert comm_name(group_for(default_registry().create("ascend-sim"))) == name  # one name per group


def _args(dtype: torch.dtype, h: int = 64, t: int = 64) -> MoeArgs:
    dims = TINY["qwen3-moe"]
    x = torch.zeros(t, h, dtype=dtype)
    w = torch.zeros(dims.e, dims.f, h, dtype=dtype)
    return MoeArgs(x, torch.zeros(dims.e, h, dtype=dtype), Experts(w, w, w.transpose(1, 2)), dims.spec)


def test_the_adapter_refuses_by_the_socs_documented_limits() -> None:
    assert fused_ep.limits_for("Ascend910B1") is fused_ep.A2 and fused_ep.limits_for("Ascend910_9392") is fused_ep.A3
    assert "ep_world_size on Atlas A2" in fused_ep.refusal(fused_ep.A2, _args(torch.bfloat16), 2, "Ascend910B1")
    assert "H = 7168" in fused_ep.refusal(fused_ep.A3, _args(torch.bfloat16), 8, "Ascend910_9392")
    assert "documented for Atlas A2 / A3 only" in fused_ep.refusal(None, _args(torch.float16), 2, "Ascend310P")
    assert "got float32" in fused_ep.refusal(fused_ep.SIM, _args(torch.float32), 2, "sim")
    assert "BS <= 256" in fused_ep.refusal(fused_ep.A2, _args(torch.float16, t=16 * 257), 16, "Ascend910B1")
    assert fused_ep.refusal(fused_ep.SIM, _args(torch.float16), 2, "sim") is None
    assert fused_ep.refusal(fused_ep.A2, _args(torch.float16), 16, "Ascend910B1") is None


@pytest.mark.parametrize("model", ["qwen3-moe", "deepseek-v3"])
def test_the_fused_layer_at_world_one_matches_the_reference(backend, model: str) -> None:
    shape = DistMoeShape(t=16, dims=TINY[model])
    w = _weights(shape, torch.bfloat16, 0, "normal")
    experts = Experts(w["w_gate"], w["w_up"], w["w_down"])
    backend.reset_memory_stats()
    out, routing = backend.moe_ep(
        w["x"], w["router_w"], *experts.tensors(), shape.dims.spec, bias=w.get("bias"), group=group_for(backend)
    )
    assert backend.case_details()["moe_ep"]["path"] == FUSED
    forced = Routing(routing.weights.double(), routing.ids)
    wide = {k: v.double() for k, v in w.items() if v is not None and v.is_floating_point()}
    ref = ops.moe(wide["x"], wide["router_w"], wide["w_gate"], wide["w_up"], wide["w_down"], shape.dims.spec,
                  routing=forced)[0]  # fmt: skip
    assert out.dtype == torch.bfloat16 and float((out.double() - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.slow
def test_dist_moe_ep_on_two_ranks_takes_the_fused_path_in_half_precision(tmp_path: Path) -> None:
    out = tmp_path / "ep.jsonl"
    run = _torchrun(tmp_path, "-w", "dist.moe_ep", "--preset", "tiny", "-b", "ascend-sim", "--distribution",
                    "normal", "--seeds", "0", "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    records = _records(out)
    assert records and all(r["status"] == "passed" for r in records)
    assert all(r["parity"]["layout"]["world_size"] == 2 for r in records)
    for r in records:
        path = r["implementation"]["moe_ep"]
        if r["case"]["dtype"] == "float32":
            assert path["path"].startswith("all_to_all_single") and "float32" in path["why"]
        else:
            assert path["path"] == FUSED, path
