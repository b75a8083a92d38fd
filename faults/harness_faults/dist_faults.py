"""Planted faults of the distributed ops (harness/expert_parallel.py, harness/tensor_parallel.py), and a correct
expert-parallel layer that orders its dispatch differently. Each fault changes one step of the default and shows
only on two ranks or more (on one rank every row stays home): run them under torchrun with `--plugin`:

    torchrun --nproc-per-node 2 -m harness run -w dist.moe_ep --preset tiny -b bug-ep-split-off \
        --plugin faults/harness_faults/dist_faults.py

`harness selftest` runs them (faults/harness_faults/checks.py DIST_CHECKS) only under torchrun with 2+ ranks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness.backends.torch_cpu import TorchCpu
from harness.expert_parallel import ExpertParallel
from harness.op_types import Experts, MoeArgs
from harness.tensor_parallel import TensorParallelAttention
from harness.tensor_parallel_lm import DecoderSpec, DecoderWeights, TensorParallelDecoder


class SplitOffByOne(ExpertParallel):
    """Tokens sent to the wrong rank: the split sizes for ranks 0 and 1 off by one, so the last row meant for
    rank 0 lands on rank 1, whose expert of the same local index runs it."""

    def plan(self, ids: torch.Tensor, dest: torch.Tensor, world: int) -> tuple[torch.Tensor, list[int]]:
        order, send = super().plan(ids, dest, world)
        if world > 1 and send[0] > 0:
            send[0], send[1] = send[0] - 1, send[1] + 1
        return order, send


class CombineInDispatchOrder(ExpertParallel):
    """The expert outputs summed in the order they were dispatched (grouped by rank), not put back in token order."""

    def combine(self, back: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        return back


class ExpertSorted(ExpertParallel):
    """Correct, ordered differently: the dispatch sorted by expert id, tokens in reverse within an expert (the
    receiver takes each row's expert id; the combine puts rows back in token order whatever the send order)."""

    def plan(self, ids: torch.Tensor, dest: torch.Tensor, world: int) -> tuple[torch.Tensor, list[int]]:
        n = ids.numel()
        order = torch.argsort(ids * n + (n - 1 - torch.arange(n)), stable=True)  # by expert, tokens reversed
        return order, torch.bincount(dest, minlength=world).tolist()


class MissingGatherPiece(TensorParallelAttention):
    """The gather leaves the last rank's heads at zero (its piece never copied in)."""

    def gather(self, piece: torch.Tensor, group: Any, heads: list[int]) -> torch.Tensor:
        out = super().gather(piece, group, heads)
        if len(heads) > 1 and heads[-1]:
            out[:, -heads[-1] :] = 0
        return out


class _Ep(TorchCpu):
    scheme: ClassVar[type[ExpertParallel]] = ExpertParallel

    def moe_ep(self, x, router_w, w_gate, w_up, w_down, spec, *, bias=None, shared=None, routing=None, group=None):  # type: ignore[override]
        args = MoeArgs(x, router_w, Experts(w_gate, w_up, w_down), spec, bias, shared, routing)
        return self.scheme().run(self, args, group)


class EpSplitOff(_Ep):
    name: ClassVar[str] = "bug-ep-split-off"
    scheme: ClassVar[type[ExpertParallel]] = SplitOffByOne


class EpDispatchOrder(_Ep):
    name: ClassVar[str] = "bug-ep-dispatch-order"
    scheme: ClassVar[type[ExpertParallel]] = CombineInDispatchOrder


class EpExpertSorted(_Ep):
    name: ClassVar[str] = "ep-expert-sorted"
    scheme: ClassVar[type[ExpertParallel]] = ExpertSorted


class TpMissingGather(TorchCpu):
    name: ClassVar[str] = "bug-tp-missing-gather"

    def attention_tp(self, q, k, v, *, causal=False, window=None, scale=None, group=None):  # type: ignore[override]
        return MissingGatherPiece().run(self, q, k, v, group, causal=causal, window=window, scale=scale)


class OprojNotReduced(TensorParallelDecoder):
    """TP all_reduce missing on one projection: each rank keeps its own o_proj partial sum (its heads only)."""

    def reduce(self, partial: torch.Tensor, group: Any, where: str) -> torch.Tensor:
        return partial if where == "o_proj" else super().reduce(partial, group, where)


class ReduceScatterGather(TensorParallelDecoder):
    """Correct, built differently: each row-parallel sum as reduce_scatter (each rank sums one chunk of the
    flattened partials) then all_gather of the chunks, instead of one all_reduce."""

    def reduce(self, partial: torch.Tensor, group: Any, where: str) -> torch.Tensor:
        import torch.distributed as dist

        world = dist.get_world_size(group)
        flat = partial.float().reshape(-1)  # [N]
        chunk = -(-flat.numel() // world)
        padded = flat.new_zeros(chunk * world)
        padded[: flat.numel()] = flat
        mine = flat.new_empty(chunk)
        dist.reduce_scatter(mine, list(padded.chunk(world)), group=group)
        pieces = [flat.new_empty(chunk) for _ in range(world)]
        dist.all_gather(pieces, mine, group=group)
        return torch.cat(pieces)[: flat.numel()].view(partial.shape).to(partial.dtype)


class _Tp(TorchCpu):
    scheme: ClassVar[type[TensorParallelDecoder]] = TensorParallelDecoder

    def llm_tp(self, input_ids, *weights, heads, kv_heads, eps=1e-6, rope_theta=10000.0, group=None):  # type: ignore[override]
        spec = DecoderSpec(heads, kv_heads, eps, rope_theta)
        return self.scheme().run(self, input_ids, DecoderWeights(*weights), spec, group)


class TpMissingReduce(_Tp):
    name: ClassVar[str] = "bug-tp-missing-reduce"
    scheme: ClassVar[type[TensorParallelDecoder]] = OprojNotReduced


class TpReduceScatter(_Tp):
    name: ClassVar[str] = "tp-reduce-scatter"
    scheme: ClassVar[type[TensorParallelDecoder]] = ReduceScatterGather
