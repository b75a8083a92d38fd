"""The default tensor-parallel attention (`Backend.attention_tp`): heads split across the ranks of a process group,
built from the backend's own `attention` op and an all_gather.

The kv heads go to ranks in contiguous ranges (`even_bounds`), each with its whole GQA group of query heads, so
no rank needs another's keys. Each rank runs attention on its heads and all_gathers the pieces (padded to the
largest: all_gather takes equal sizes), so every rank holds the whole [B, Hq, Sq, Dv] output.
"""

from __future__ import annotations

from typing import Any

from harness.expert_parallel import even_bounds
from harness.lazy import torch


class TensorParallelAttention:
    """One tensor-parallel attention call on a process group; `gather` is a method so a fault can change it."""

    def gather(self, piece: torch.Tensor, group: Any, heads: list[int]) -> torch.Tensor:
        """Every rank's query heads [B, heads[r], Sq, Dv] concatenated in rank order along dim 1."""
        import torch.distributed as dist

        B, _, Sq, Dv = piece.shape
        longest = max(heads)
        padded = piece.new_zeros((B, longest, Sq, Dv))
        padded[:, : piece.shape[1]] = piece
        pieces = [torch.empty_like(padded) for _ in heads]
        dist.all_gather(pieces, padded, group=group)
        return torch.cat([p[:, :n] for p, n in zip(pieces, heads, strict=True)], dim=1)

    def run(self, backend: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: Any, **kw: Any) -> Any:
        """[B,Hq,Sq,D] x [B,Hkv,Skv,D] x [B,Hkv,Skv,Dv] -> [B,Hq,Sq,Dv], identical on every rank."""
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        Hq, Hkv = q.shape[1], k.shape[1]
        g = Hq // Hkv  # query heads per kv head: a GQA group stays on one rank
        kv = even_bounds(Hkv, world)
        heads = [(kv[r + 1] - kv[r]) * g for r in range(world)]
        k_loc, v_loc = k[:, kv[rank] : kv[rank + 1]], v[:, kv[rank] : kv[rank + 1]]
        q_loc = q[:, kv[rank] * g : kv[rank + 1] * g]  # [B, Hq_r, Sq, D]
        if q_loc.shape[1]:
            piece = backend.attention(q_loc.contiguous(), k_loc.contiguous(), v_loc.contiguous(), **kw)
        else:  # more ranks than kv heads: this rank holds none
            piece = q.new_empty((q.shape[0], 0, q.shape[2], v.shape[3]))
        return self.gather(piece.contiguous(), group, heads)
