"""The default expert-parallel MoE layer (`Backend.moe_ep`): experts partitioned across the ranks of a process
group, built from the backend's own `route` / `router_logits` / `experts` ops and torch.distributed collectives.

Each rank holds a contiguous slice of the tokens and a contiguous range of the experts (`even_bounds`). A rank
routes its tokens, orders its (token, slot) pairs by destination rank (`ExpertParallel.plan`), exchanges the
split sizes, sends the rows and their local expert ids with `all_to_all_single` (uneven splits), runs the
received rows through its experts (the backend's `experts` op with weight 1 per row), sends the results back
the same way, puts them back in token order (`combine`) and sums them with the routing weights in float32.
Every rank then all_gathers the token slices, so each holds the whole layer's output [T, H] and routing.

Steps are methods so a fault plugin (or a different, correct ordering) changes exactly one of them.
"""

from __future__ import annotations

from typing import Any

from harness.lazy import torch
from harness.op_types import Experts, MoeArgs, Routing


def even_bounds(n: int, world: int) -> list[int]:
    """Contiguous [bounds[r], bounds[r+1]) ranges of n items over `world` ranks, the first n % world one longer."""
    base, extra = divmod(n, world)
    bounds = [0]
    for r in range(world):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds


def owners(ids: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """The rank owning each expert id under `bounds` (same shape as ids, int64)."""
    edges = torch.tensor(bounds[1:-1], dtype=torch.int64, device=ids.device)
    return torch.bucketize(ids, edges, right=True)


def gather_rows(t: torch.Tensor, group: Any, sizes: list[int]) -> torch.Tensor:
    """Every rank's rows of `t` (rank r holds sizes[r]) concatenated in rank order, on every rank; rows padded
    to the longest slice for the transport (all_gather takes equal sizes)."""
    import torch.distributed as dist

    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(pieces, sizes, strict=True)])


class ExpertParallel:
    """One expert-parallel layer call on a process group."""

    def plan(self, ids: torch.Tensor, dest: torch.Tensor, world: int) -> tuple[torch.Tensor, list[int]]:
        """The send order of the flat (token, slot) pairs, given each one's expert `ids` and owning rank `dest`
        ([N] each): grouped by destination rank, and within one any order (the receiver takes each row's expert
        id with it; this one keeps token order); and the rows for each rank: [N], [world]."""
        order = torch.argsort(dest, stable=True)  # [N] grouped by rank, token-major within
        return order, torch.bincount(dest, minlength=world).tolist()

    def combine(self, back: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """The expert outputs, received in send order, back in (token, slot) order: [N, H]."""
        out = torch.empty_like(back)
        out[order] = back
        return out

    def run(self, backend: Any, args: MoeArgs, group: Any) -> tuple[torch.Tensor, Routing]:
        """[T, H] -> ([T, H], the Routing applied), identical on every rank of `group`."""
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        x, experts = args.x, args.experts
        T, E = x.shape[0], experts.w_gate.shape[0]
        tokens, held = even_bounds(T, world), even_bounds(E, world)
        x_loc = x[tokens[rank] : tokens[rank + 1]]  # [T_r, H]
        if args.routing is not None:
            routing = Routing(*(t[tokens[rank] : tokens[rank + 1]] for t in args.routing.tensors()))
        else:
            routing = backend.route(backend.router_logits(x_loc, args.router_w), args.spec, bias=args.bias)
        k = routing.ids.shape[1]
        flat = routing.ids.reshape(-1).long()  # [N = T_r * k] expert of each (token, slot)
        dest = owners(flat, held)  # [N]
        order, send = self.plan(flat, dest, world)
        local_ids = flat[order] - torch.tensor(held[:-1], device=flat.device)[dest[order]]  # [N] id on the owner
        recv_t = torch.empty(world, dtype=torch.int64, device=x.device)
        dist.all_to_all_single(recv_t, torch.tensor(send, dtype=torch.int64, device=x.device), group=group)
        recv = recv_t.tolist()
        rows = x_loc[order // k]  # [N, H] the row of each send slot
        got = rows.new_empty((sum(recv), x.shape[1]))
        dist.all_to_all_single(got, rows.contiguous(), recv, send, group=group)
        got_ids = local_ids.new_empty(sum(recv))
        dist.all_to_all_single(got_ids, local_ids.contiguous(), recv, send, group=group)
        mine = Experts(*(w[held[rank] : held[rank + 1]] for w in experts.tensors()))
        if got.shape[0]:
            ones = torch.ones(got.shape[0], 1, dtype=torch.float32, device=got.device)
            y = backend.experts(got, mine, Routing(ones, got_ids[:, None]), None)  # [n, H] one expert per row
        else:
            y = got
        back = rows.new_empty(rows.shape)
        dist.all_to_all_single(back, y.contiguous(), send, recv, group=group)
        per_slot = self.combine(back, order).float().reshape(-1, k, x.shape[1])  # [T_r, k, H] token order
        out = (per_slot * routing.weights.float()[..., None]).sum(dim=1)  # [T_r, H] float32
        if args.shared is not None:
            out = out + args.shared.apply(x_loc).float()
        sizes = [tokens[r + 1] - tokens[r] for r in range(world)]
        full = gather_rows(out.to(x.dtype), group, sizes)  # [T, H]
        applied = Routing(*(gather_rows(t.contiguous(), group, sizes) for t in routing.tensors()))
        return full, (args.routing if args.routing is not None else applied)
