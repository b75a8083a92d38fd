"""The Ascend adapter's expert-parallel MoE layer on torch_npu's fused pair: `npu_moe_distribute_dispatch` ->
the grouped SwiGLU experts (npu_grouped_matmul, as `Ascend.experts`) on the received, expert-grouped rows ->
`npu_moe_distribute_combine` (the routing weights applied there, once). Where the documented constraints of the
SoC refuse a case, `refusal` says why and the adapter takes the contract's default (`Backend.moe_ep`).

Facts and sources: docs/ascend.md "Expert parallel: fused dispatch/combine".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.expert_parallel import even_bounds, gather_rows
from harness.lazy import torch
from harness.op_types import Experts, MoeArgs, Routing


@dataclass(frozen=True)
class DistributeLimits:
    """One SoC's documented limits of npu_moe_distribute_dispatch / _combine (op-plugin docs, v1 ops)."""

    soc: str
    worlds: tuple[int, ...] | None  # ep_world_size values allowed; None: any (the simulator)
    bs_max: int  # tokens per card
    k_max: int
    h_exact: int | None = None  # A3: H must be 7168
    h_max: int = 7168  # A2: H in (0, 7168], a multiple of 32
    experts_max: int = 512
    local_max: int | None = None  # A2: moe_expert_num / ep_world_size <= 24


A2 = DistributeLimits("Atlas A2 (Ascend910B)", (16, 32, 64), bs_max=256, k_max=16, local_max=24)
A3 = DistributeLimits("Atlas A3 (Ascend910_93)", (8, 16, 32, 64, 128, 144, 256, 288), bs_max=512, k_max=8,
                      h_exact=7168)  # fmt: skip
# The simulator: the rules both SoCs share, without the SoC's world-size and H floors (docs/ascend.md).
SIM = DistributeLimits("ascend-sim (shared rules, no world-size / H floor)", None, bs_max=512, k_max=16)


def limits_for(device_name: str) -> DistributeLimits | None:
    """The limits of the SoC a device name says (torch.npu.get_device_name()), None where the ops are undocumented."""
    if device_name.startswith("Ascend910_93"):
        return A3
    if device_name.startswith("Ascend910B"):
        return A2
    return None


def refusal(limits: DistributeLimits | None, args: MoeArgs, world: int, device_name: str) -> str | None:
    """Why the fused pair cannot take this layer on `world` cards (a documented limit), or None when it can."""
    if limits is None:
        return f"npu_moe_distribute_dispatch is documented for Atlas A2 / A3 only, not {device_name!r}"
    x = args.x
    n, hidden = x.shape
    n_experts, top_k = args.experts.w_gate.shape[0], args.spec.top_k
    if x.dtype not in (torch.bfloat16, torch.float16):
        return f"x: bfloat16 or float16, got {str(x.dtype).removeprefix('torch.')}"
    if limits.worlds is not None and world not in limits.worlds:
        return f"ep_world_size on {limits.soc}: {', '.join(map(str, limits.worlds))}, got {world}"
    if n < world:
        return f"BS > 0 on every card: {n} tokens over {world} cards"
    if -(-n // world) > limits.bs_max:
        return f"BS <= {limits.bs_max} on {limits.soc}, got {-(-n // world)}"
    if not 0 < top_k <= min(limits.k_max, n_experts):
        return f"K: 0 < K <= {limits.k_max} on {limits.soc} and K <= moe_expert_num, got {top_k}"
    if not 1 <= n_experts <= limits.experts_max or n_experts % world:
        return f"moe_expert_num in [1, {limits.experts_max}], a multiple of ep_world_size: {n_experts} over {world}"
    if limits.local_max is not None and n_experts // world > limits.local_max:
        return f"moe_expert_num / ep_world_size <= {limits.local_max} on {limits.soc}, got {n_experts // world}"
    if limits.h_exact is not None and hidden != limits.h_exact:
        return f"H = {limits.h_exact} on {limits.soc}, got {hidden}"
    if not (0 < hidden <= limits.h_max and hidden % 32 == 0):
        return f"H in (0, {limits.h_max}], a multiple of 32, got {hidden}"
    return None


def grouped_swiglu(tnpu: Any, rows: torch.Tensor, experts: Experts, counts: torch.Tensor) -> torch.Tensor:
    """Expert-grouped rows [M, H] (counts [E] rows per expert, in expert order) through each one's SwiGLU MLP:
    npu_grouped_matmul(w13) -> npu_swiglu -> npu_grouped_matmul(w2): [M, H]; rows past the counts' total are
    garbage (grouped matmul leaves them unwritten)."""
    w_gate, w_up, w_down = experts.tensors()
    w13 = torch.cat([w_gate, w_up], dim=1).transpose(1, 2)  # [E, H, 2F]: grouped matmul takes [E, K, N]
    h = tnpu.npu_grouped_matmul([rows], [w13], group_list=counts, split_item=2, group_type=0, group_list_type=1)[0]
    h = tnpu.npu_swiglu(h, dim=-1)  # [M, F]
    return tnpu.npu_grouped_matmul(
        [h], [w_down.transpose(1, 2)], group_list=counts, split_item=2, group_type=0, group_list_type=1
    )[0]  # [M, H]


class FusedExpertParallel:
    """One EP layer call on the fused pair; `group_ep` the HCCL communicator name of `group`."""

    def run(self, backend: Any, args: MoeArgs, group: Any, group_ep: str) -> tuple[torch.Tensor, Routing]:
        """[T, H] -> ([T, H], the Routing applied), identical on every card of `group`."""
        import torch.distributed as dist

        tnpu = backend.tnpu
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        x, experts = args.x, args.experts
        T, E = x.shape[0], experts.w_gate.shape[0]
        tokens, local = even_bounds(T, world), E // world
        x_loc = x[tokens[rank] : tokens[rank + 1]]  # [BS, H]
        if args.routing is not None:
            routing = Routing(*(t[tokens[rank] : tokens[rank + 1]] for t in args.routing.tensors()))
        else:
            routing = backend.route(backend.router_logits(x_loc, args.router_w), args.spec, bias=args.bias)
        ids = routing.ids.to(torch.int32)  # [BS, K]
        common = {"group_ep": group_ep, "ep_world_size": world, "ep_rank_id": rank, "moe_expert_num": E}
        global_bs = -(-T // world) * world  # max_bs * ep_world_size: right whether or not the cards' BS agree
        expand_x, _, expand_idx, counts, ep_recv, tp_recv, expand_scales = tnpu.npu_moe_distribute_dispatch(
            x_loc, ids, **common, global_bs=global_bs, expert_token_nums_type=1
        )  # expand_x [A, H] grouped by local expert; counts [local] rows per expert
        mine = Experts(*(w[rank * local : (rank + 1) * local] for w in experts.tensors()))  # contiguous by rank
        y = grouped_swiglu(tnpu, expand_x, mine, counts)  # [A, H]
        out = tnpu.npu_moe_distribute_combine(
            y, ids, expand_idx, ep_recv, routing.weights.float(), **common,
            tp_send_counts=tp_recv, expand_scales=expand_scales, global_bs=global_bs,
        )  # fmt: skip  # [BS, H] weighted by the routing, in token order
        if args.shared is not None:
            out = (out.float() + args.shared.apply(x_loc, backend._swiglu_mlp).float()).to(x.dtype)
        sizes = [tokens[r + 1] - tokens[r] for r in range(world)]
        full = gather_rows(out, group, sizes)  # [T, H]
        applied = Routing(*(gather_rows(t.contiguous(), group, sizes) for t in routing.tensors()))
        return full, (args.routing if args.routing is not None else applied)
