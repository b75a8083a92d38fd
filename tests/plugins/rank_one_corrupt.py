"""A test plugin: a tensor-parallel attention whose all-gathered output is right on rank 0 and corrupted on
rank 1 alone (one element changed after the gather). Rank 0 judges and records the case, so only the ranks'
agreement on the output (harness/rank_agreement.py) can catch it. At world size 1 it is torch-cpu."""

from __future__ import annotations

from typing import ClassVar

import torch.distributed as dist

from harness.backends.torch_cpu import TorchCpu


class RankOneCorrupt(TorchCpu):
    name: ClassVar[str] = "rank-one-corrupt"

    def attention_tp(self, q, k, v, *, causal=False, window=None, scale=None, group=None):  # type: ignore[override]
        out = super().attention_tp(q, k, v, causal=causal, window=window, scale=scale, group=group)
        if dist.get_world_size(group) > 1 and dist.get_rank(group) == 1:
            out = out.clone()
            out.view(-1)[0] += 1.0  # [*] rank 1's copy only
        return out


class RankOneRaises(TorchCpu):
    """Rank 1 raises after its op's collectives are done: rank 0 has its output and judges it, rank 1 none."""

    name: ClassVar[str] = "rank-one-raises"

    def attention_tp(self, q, k, v, *, causal=False, window=None, scale=None, group=None):  # type: ignore[override]
        out = super().attention_tp(q, k, v, causal=causal, window=window, scale=scale, group=group)
        if dist.get_world_size(group) > 1 and dist.get_rank(group) == 1:
            raise RuntimeError("planted: rank 1 lost its output")
        return out
