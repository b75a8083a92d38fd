"""The simulator's `npu_moe_distribute_dispatch` / `npu_moe_distribute_combine` (torch_npu's fused EP MoE pair),
following the op-plugin docs (docs/context/torch_npu-npu_moe_distribute_dispatch.md and ..._combine.md; facts
and what is unverified: docs/ascend.md "Expert parallel: fused dispatch/combine").

The real ops take an HCCL communicator *name* (`group._get_backend(torch.device("npu")).get_hccl_comm_name(rank)`);
here `comm_name(group)` registers a torch.distributed group (gloo) under a name of the same kind, and the ops
resolve the group from the name, so the adapter's name plumbing is the one torch_npu needs. The exchange is
`all_to_all_single` over that group. Documented argument rules raise `DistributeArgumentError` with the rule's
words; the hardware's size floors (A2: ep_world_size 16/32/64; A3: H 7168) are the adapter's to refuse (they
differ per SoC): the simulator checks the rules both SoCs share, so CI's tiny worlds run the fused path.

Layout modelled (the docs say the values of expand_idx / ep_recv_counts may differ per SoC and version and must
only be passed on to combine): expand_x rows grouped by local expert, within one expert by source rank, within
one source in token order; rows past the total are NaN (never to be read); expand_idx[t * K + k] = the pair's
place among the pairs this rank sends to the same expert; ep_recv_counts = prefix sums over (local expert,
source rank), A3's (ep_world_size * local_expert_num,) form.
"""

from __future__ import annotations

from typing import Any

from harness.lazy import torch

DTYPES = ("bfloat16", "float16")
MAX_EXPERTS = 512  # moe_expert_num in [1, 512]
MAX_BS = 512  # 0 < BS <= 256 (A2) / 512 (A3): the larger; the adapter applies the SoC's own
MAX_K = 16  # 0 < K <= 16 (A2) / 8 (A3)
MAX_H, H_MULTIPLE = 7168, 32  # A2: (0, 7168], multiples of 32; A3: 7168 only

_groups: dict[str, Any] = {}


class DistributeArgumentError(ValueError):
    """A call the docs rule out (the real op fails it in its parameter check)."""


def comm_name(group: Any) -> str:
    """The communicator name of `group` for group_ep (the real ops' HCCL name; here a registered gloo group)."""
    for name, known in _groups.items():
        if known is group:
            return name
    name = f"sim_hccl_comm_{len(_groups)}"
    _groups[name] = group
    return name


def _require(ok: bool, rule: str) -> None:
    if not ok:
        raise DistributeArgumentError(rule)


def _group(group_ep: str, ep_world_size: int, ep_rank_id: int) -> Any:
    """The registered group behind `group_ep`, after the rules on the EP domain's name, size and rank."""
    import torch.distributed as dist

    _require(isinstance(group_ep, str) and 1 <= len(group_ep) < 128, "group_ep: string length in [1, 128)")
    _require(group_ep in _groups, f"group_ep {group_ep!r} names no communicator (an HCCL comm name is needed)")
    group = _groups[group_ep]
    _require(ep_world_size == dist.get_world_size(group), "ep_world_size: the EP communication domain's size")
    _require(0 <= ep_rank_id < ep_world_size, "ep_rank_id: in [0, ep_world_size)")
    _require(ep_rank_id == dist.get_rank(group), "ep_rank_id: this card's id in the EP domain (distinct per card)")
    return group


def _check_ids(expert_ids: torch.Tensor, bs: int, moe_expert_num: int, ep_world_size: int) -> int:
    """The rules on expert_ids and the expert count; returns local_expert_num."""
    _require(1 <= moe_expert_num <= MAX_EXPERTS, f"moe_expert_num: in [1, {MAX_EXPERTS}]")
    _require(moe_expert_num % ep_world_size == 0, "moe_expert_num % (ep_world_size - shared_expert_rank_num) == 0")
    _require(expert_ids.dim() == 2 and expert_ids.shape[0] == bs, "expert_ids: 2D (BS, K)")
    _require(expert_ids.dtype == torch.int32, "expert_ids: int32")
    k = expert_ids.shape[1]
    _require(0 < k <= min(MAX_K, moe_expert_num), f"K: 0 < K <= {MAX_K} and K <= moe_expert_num")
    ids = expert_ids.long()
    _require(bool(((ids >= 0) & (ids < moe_expert_num)).all()), "expert_ids: values in [0, moe_expert_num)")
    _require(bool((ids.sort(dim=1).values.diff(dim=1) != 0).all()), "expert_ids: the K values of a row are distinct")
    return moe_expert_num // ep_world_size


def _check_common(x: torch.Tensor, what: str, *, tp_world_size: int, shared_expert_rank_num: int) -> None:
    _require(x.dim() == 2, f"{what}: 2D")
    _require(str(x.dtype).removeprefix("torch.") in DTYPES, f"{what}: bfloat16 or float16")
    h = x.shape[1]
    _require(0 < h <= MAX_H and h % H_MULTIPLE == 0, f"H: in (0, {MAX_H}], a multiple of {H_MULTIPLE}")
    if tp_world_size > 1 or shared_expert_rank_num:
        raise NotImplementedError("the simulator models no TP domain and no shared-expert cards")


def _capacity(bs: int, k: int, local: int, world: int, global_bs: int) -> int:
    """A: the most rows a card can receive (global_bs 0: BS * ep_world_size * min(local_expert_num, K))."""
    return (global_bs or bs * world) * min(local, k)


def _check_global_bs(bs: int, world: int, global_bs: int, group: Any) -> list[int]:
    """Every card's BS; global_bs is 0 or BS * ep_world_size when they agree, else max_bs * ep_world_size."""
    import torch.distributed as dist

    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([bs], dtype=torch.int64), group=group)
    every = [int(s) for s in sizes]
    if len(set(every)) == 1:
        _require(global_bs in (0, bs * world), "global_bs: 0 or BS * ep_world_size when every card's BS is the same")
    else:
        _require(global_bs == max(every) * world, "global_bs: max_bs * ep_world_size when the cards' BS differ")
    return every


def _send_plan(ids: torch.Tensor, moe_expert_num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the flat (token, slot) pairs' experts `ids` [N]: the send order (by global expert = destination-major,
    token order within), each pair's place among the pairs sent to its expert (expand_idx), the pairs per expert."""
    order = torch.argsort(ids, stable=True)  # [N]
    per_expert = torch.bincount(ids, minlength=moe_expert_num)  # [E]
    starts = per_expert.cumsum(0) - per_expert  # [E] exclusive prefix
    place = torch.empty_like(ids)
    place[order] = torch.arange(ids.numel()) - starts[ids[order]]
    return order, place, per_expert


def npu_moe_distribute_dispatch(
    x: torch.Tensor,
    expert_ids: torch.Tensor,
    group_ep: str,
    ep_world_size: int,
    ep_rank_id: int,
    moe_expert_num: int,
    *,
    scales: torch.Tensor | None = None,
    x_active_mask: torch.Tensor | None = None,
    expert_scales: torch.Tensor | None = None,
    group_tp: str = "",
    tp_world_size: int = 0,
    tp_rank_id: int = 0,
    expert_shard_type: int = 0,
    shared_expert_num: int = 1,
    shared_expert_rank_num: int = 0,
    quant_mode: int = 0,
    global_bs: int = 0,
    expert_token_nums_type: int = 1,
) -> tuple[Any, ...]:
    """x [BS, H] -> (expand_x [A, H], dynamic_scales None, expand_idx [BS*K] int32, expert_token_nums
    [local_expert_num] int64, ep_recv_counts [ep_world_size * local_expert_num] int32, tp_recv_counts [0] int32,
    expand_scales [A] float32 or None)."""
    import torch.distributed as dist

    group = _group(group_ep, ep_world_size, ep_rank_id)
    _check_common(x, "x", tp_world_size=tp_world_size, shared_expert_rank_num=shared_expert_rank_num)
    bs, h = x.shape
    _require(0 < bs <= MAX_BS, f"BS: 0 < BS <= {MAX_BS}")
    local = _check_ids(expert_ids, bs, moe_expert_num, ep_world_size)
    _require(quant_mode in (0, 2), "quant_mode: 0 (none) or 2 (dynamic)")
    if quant_mode or scales is not None or x_active_mask is not None:
        raise NotImplementedError("quantization, scales and x_active_mask are not modelled")
    _require(expert_token_nums_type in (0, 1), "expert_token_nums_type: in [0, 1]")
    _check_global_bs(bs, ep_world_size, global_bs, group)
    k = expert_ids.shape[1]
    ids = expert_ids.reshape(-1).long()  # [N = BS * K]
    order, place, per_expert = _send_plan(ids, moe_expert_num)
    counts = torch.empty_like(per_expert)  # [world * local]: (source card, local expert) pairs received
    dist.all_to_all_single(counts, per_expert, group=group)
    got = counts.view(ep_world_size, local)  # [src, e]
    send = per_expert.view(ep_world_size, local).sum(dim=1).tolist()
    recv = got.sum(dim=1).tolist()
    rows = x.new_empty((sum(recv), h))  # received: source-major, expert-major within, token order within
    dist.all_to_all_single(rows, x[order // k].contiguous(), recv, send, group=group)
    expert_major = torch.argsort(torch.repeat_interleave(torch.arange(local).repeat(ep_world_size), got.reshape(-1)),
                                 stable=True)  # fmt: skip
    a = _capacity(bs, k, local, ep_world_size, global_bs)
    expand_x = x.new_full((max(a, rows.shape[0]), h), float("nan"))  # rows past the total are never read
    expand_x[: rows.shape[0]] = rows[expert_major]
    tokens = got.sum(dim=0)  # [local] rows per local expert
    token_nums = (tokens if expert_token_nums_type == 1 else tokens.cumsum(0)).to(torch.int64)
    ep_recv_counts = got.T.reshape(-1).cumsum(0).to(torch.int32)  # prefix sums over (local expert, source)
    expand_scales = None
    if expert_scales is not None:  # A2 only: the pairs' weights travel with the rows
        sent = expert_scales.reshape(-1).float()[order].contiguous()
        moved = sent.new_empty(rows.shape[0])
        dist.all_to_all_single(moved, sent, recv, send, group=group)
        expand_scales = moved.new_zeros(expand_x.shape[0])
        expand_scales[: rows.shape[0]] = moved[expert_major]
    tp_recv_counts = torch.zeros(0, dtype=torch.int32)
    return expand_x, None, place.to(torch.int32), token_nums, ep_recv_counts, tp_recv_counts, expand_scales


def npu_moe_distribute_combine(
    expand_x: torch.Tensor,
    expert_ids: torch.Tensor,
    expand_idx: torch.Tensor,
    ep_send_counts: torch.Tensor,
    expert_scales: torch.Tensor,
    group_ep: str,
    ep_world_size: int,
    ep_rank_id: int,
    moe_expert_num: int,
    *,
    tp_send_counts: torch.Tensor | None = None,
    x_active_mask: torch.Tensor | None = None,
    activation_scale: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
    group_list: torch.Tensor | None = None,
    expand_scales: torch.Tensor | None = None,
    shared_expert_x: torch.Tensor | None = None,
    group_tp: str = "",
    tp_world_size: int = 0,
    tp_rank_id: int = 0,
    expert_shard_type: int = 0,
    shared_expert_num: int = 1,
    shared_expert_rank_num: int = 0,
    global_bs: int = 0,
    out_dtype: int = 0,
    comm_quant_mode: int = 0,
    group_list_type: int = 0,
) -> torch.Tensor:
    """The rows back the way dispatch brought them, then out[t] = sum_k expert_scales[t, k] * row(t, k) in
    float32, rounded once to expand_x's dtype: [BS, H]."""
    import torch.distributed as dist

    group = _group(group_ep, ep_world_size, ep_rank_id)
    _check_common(expand_x, "expand_x", tp_world_size=tp_world_size, shared_expert_rank_num=shared_expert_rank_num)
    bs = expert_ids.shape[0] if expert_ids.dim() == 2 else -1
    local = _check_ids(expert_ids, bs, moe_expert_num, ep_world_size)
    k = expert_ids.shape[1]
    _require(expert_scales.shape == (bs, k) and expert_scales.dtype == torch.float32, "expert_scales: float (BS, K)")
    _require(expand_idx.shape == (bs * k,) and expand_idx.dtype == torch.int32, "expand_idx: int32 (BS * K,)")
    _require(
        ep_send_counts.shape == (ep_world_size * local,) and ep_send_counts.dtype == torch.int32,
        "ep_send_counts: int32 (ep_world_size * local_expert_num,)",
    )
    _require(comm_quant_mode == 0, "comm_quant_mode: only 0 is modelled")
    _check_global_bs(bs, ep_world_size, global_bs, group)
    ends = ep_send_counts.long()
    got = (ends - torch.cat([ends.new_zeros(1), ends[:-1]])).view(local, ep_world_size)  # [e, dst]
    _require(bool((got >= 0).all()) and int(ends[-1]) <= expand_x.shape[0], "ep_send_counts: dispatch's ep_recv_counts")
    source_major = torch.argsort(torch.repeat_interleave(torch.arange(ep_world_size).repeat(local), got.reshape(-1)),
                                 stable=True)  # fmt: skip
    back = expand_x[: int(ends[-1])][source_major].contiguous()  # to each source, expert-major, in place order
    ids = expert_ids.reshape(-1).long()
    per_expert = torch.bincount(ids, minlength=moe_expert_num)  # [E] the pairs this card sent to each expert
    send = got.sum(dim=0).tolist()
    recv = per_expert.view(ep_world_size, local).sum(dim=1).tolist()
    rows = expand_x.new_empty((sum(recv), expand_x.shape[1]))  # by global expert, then place
    dist.all_to_all_single(rows, back, recv, send, group=group)
    starts = per_expert.cumsum(0) - per_expert  # [E]
    per_slot = rows[starts[ids] + expand_idx.long()].float().view(bs, k, -1)  # [BS, K, H] token order
    return (per_slot * expert_scales[..., None]).sum(dim=1).to(expand_x.dtype)
