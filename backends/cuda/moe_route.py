"""Routing and permutation of the CUDA MoE layer: the fused Triton kernels (moe_route_kernels.py) or pure torch.

Both forms give the same ids, counts, group offsets, slot order and permuted rows bit for bit (weights within
float32 rounding), so the torch form is the kernels' test oracle and the path wherever Triton is absent or the
tensors are not on CUDA. Semantics: ids chosen in float64 by harness.ops' own selection (softmax_topk, or
sigmoid + bias with DeepSeek-V3's group ranking by the sum of each group's top-2), an exact tie to the lower
index; weights the float32 scores of the chosen experts, renormalized when asked, times `scaling`; slots in
expert order as a stable sort of the flattened ids (token order within an expert). No host syncs either way.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from harness import ops
from harness.backends.cuda import moe_route_kernels as rk
from harness.lazy import torch
from harness.op_types import Routing, RoutingSpec

MAX_EXPERTS = 1024  # the route kernel holds a [BT, E] tile per program; more experts take the torch form
PERMUTE_BLOCK = 1024


@dataclass(frozen=True)
class Routed:
    """What the routing step hands to the permutation: the decision, and (kernels only) how to place slots."""

    weights: torch.Tensor  # [T, k] float32
    ids: torch.Tensor  # [T, k] int32 (kernels) or int64 (torch)
    rank: torch.Tensor | None = None  # [T, k] int32: earlier slots of the same block on the same expert
    hist: torch.Tensor | None = None  # [NB, E] int32: per-block expert counts
    block: int = 0  # tokens per block of `hist`

    def routing(self, dtype: torch.dtype) -> Routing:
        """As the contract returns it: weights in `dtype`, ids int64."""
        return Routing(self.weights.to(dtype), self.ids.long())


@dataclass(frozen=True)
class Permuted:
    """Token slots in expert order, as the grouped GEMMs and the combine read them."""

    counts: torch.Tensor  # [E] int32 slots per expert
    offs: torch.Tensor  # [E] int32 group ends (inclusive cumsum of counts): the grouped GEMM offsets
    slot_of: torch.Tensor  # [T*k] int64: row (in expert order) of token slot t*k + j
    xs: torch.Tensor  # [T*k, H] token rows in expert order


def kernels_usable(t: torch.Tensor, num_experts: int, *, interpret: bool = False) -> bool:
    """Triton importable, the tensors on CUDA (or `interpret`: the Triton interpreter on CPU tensors), E in range."""
    on_device = t.is_cuda or interpret
    return on_device and num_experts <= MAX_EXPERTS and importlib.util.find_spec("triton") is not None


# ----- pure torch -----


def route_torch(logits: torch.Tensor, spec: RoutingSpec, bias: torch.Tensor | None = None) -> Routed:
    """[T, E] logits (any float dtype, scored in float32 as router_logits does) -> Routed (ids int64)."""
    l32 = logits.float()  # [T, E]
    _, choice, _ = ops.selection_scores(l32.double(), spec, bias=None if bias is None else bias.double())
    ids = ops.stable_topk_ids(choice, spec.top_k)  # [T, k]
    score = torch.softmax(l32, dim=-1) if spec.scheme == "softmax_topk" else torch.sigmoid(l32)  # [T, E]
    weights = score.gather(1, ids)  # [T, k]
    if spec.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routed(weights * spec.scaling, ids)


def given_torch(routing: Routing) -> Routed:
    return Routed(routing.weights.float(), routing.ids.long())


def permute_torch(x: torch.Tensor, routed: Routed, num_experts: int) -> Permuted:
    """Stable sort of the flattened ids, group ends by searchsorted (no bincount: it syncs), rows gathered."""
    k = routed.ids.shape[1]
    flat = routed.ids.reshape(-1).long()  # [T*k] expert of slot t*k + j
    sorted_ids, order = torch.sort(flat, stable=True)  # [T*k] slots grouped by expert
    experts = torch.arange(num_experts, device=flat.device, dtype=sorted_ids.dtype)
    offs = torch.searchsorted(sorted_ids, experts, right=True).to(torch.int32)  # [E]
    counts = torch.diff(offs, prepend=offs.new_zeros(1))  # [E]
    slot_of = torch.empty_like(order)
    slot_of[order] = torch.arange(order.numel(), device=order.device)  # inverse permutation
    return Permuted(counts, offs, slot_of, x.index_select(0, order // k))


# ----- Triton -----


def _block_tokens(padded_experts: int) -> int:
    return max(1, min(16, 4096 // padded_experts))  # a [BT, E] float64 tile of at most 4096 elements


def route_triton(
    logits: torch.Tensor, spec: RoutingSpec | None, bias: torch.Tensor | None = None, given: Routing | None = None
) -> Routed:
    """The route kernel: choose (spec) or load (`given`) ids, write weights, per-slot ranks, per-block counts."""
    kern = rk.kernels()
    logits = logits.contiguous()
    T, E = logits.shape
    k = given.ids.shape[1] if given is not None else spec.top_k  # type: ignore[union-attr]
    BE, KP = kern["next_pow2"](E), kern["next_pow2"](k)
    BT = _block_tokens(BE)
    NB = max(1, kern["cdiv"](T, BT))
    dev = logits.device
    rank = torch.empty(T, k, dtype=torch.int32, device=dev)
    hist = torch.zeros(NB, E, dtype=torch.int32, device=dev)
    if given is not None:
        ids_in, weights = given.ids.contiguous(), given.weights.float()
        ids = ids_in
        scheme, G, topk_group, renorm, scaling = rk.GIVEN, 1, 1, False, 1.0
    else:
        assert spec is not None
        ids_in = ids = torch.empty(T, k, dtype=torch.int32, device=dev)
        weights = torch.empty(T, k, dtype=torch.float32, device=dev)
        scheme = rk.SOFTMAX if spec.scheme == "softmax_topk" else rk.SIGMOID
        G = spec.n_group if scheme == rk.SIGMOID else 1
        topk_group, renorm, scaling = spec.topk_group, spec.renormalize, float(spec.scaling)
    if T:
        kern["route"][(NB,)](
            logits, bias.contiguous() if bias is not None else logits, ids_in, ids, weights, rank, hist,
            T, E, logits.stride(0), scaling,
            K=k, KP=KP, BT=BT, BE=BE, SCHEME=scheme, HAS_BIAS=bias is not None, G=G, GP=kern["next_pow2"](G),
            GS=E // G, TOPK_GROUP=topk_group, RENORM=renorm,
        )  # fmt: skip
    return Routed(weights, ids, rank, hist, BT)


def permute_triton(x: torch.Tensor, routed: Routed, num_experts: int) -> Permuted:
    """Offsets from the per-block counts (a few ops on [NB, E]), then the permute kernel scatters token rows."""
    assert routed.hist is not None and routed.rank is not None  # from route_triton
    kern = rk.kernels()
    hist = routed.hist  # [NB, E]
    counts = hist.sum(0, dtype=torch.int32)  # [E]
    offs = counts.cumsum(0, dtype=torch.int32)  # [E] group ends
    base = (offs - counts)[None, :] + hist.cumsum(0, dtype=torch.int32) - hist  # [NB, E] first row of (block, e)
    T, k = routed.ids.shape
    x = x.contiguous()
    slot_of = torch.empty(T * k, dtype=torch.int64, device=x.device)
    xs = x.new_empty(T * k, x.shape[1])  # [T*k, H]
    if T:
        kern["permute"][(T, kern["cdiv"](x.shape[1], PERMUTE_BLOCK))](
            x, routed.ids, routed.rank, base.contiguous(), slot_of, xs, x.shape[1], num_experts, x.stride(0),
            xs.stride(0), K=k, BT=routed.block, BLOCK=PERMUTE_BLOCK,
        )  # fmt: skip
    return Permuted(counts, offs, slot_of, xs)


# ----- dispatch -----


def route(logits: torch.Tensor, spec: RoutingSpec, bias: torch.Tensor | None, use_triton: bool) -> Routed:
    return route_triton(logits, spec, bias) if use_triton else route_torch(logits, spec, bias)


def given(routing: Routing, logits_like: torch.Tensor, num_experts: int, use_triton: bool) -> Routed:
    """A caller's routing, counted and ranked for the permutation (`logits_like`: any [*, E]-sized tensor)."""
    if not use_triton:
        return given_torch(routing)
    stub = logits_like.new_empty(routing.ids.shape[0], num_experts)  # shapes only: the kernel reads no logits
    return route_triton(stub, None, None, given=routing)


def permute(x: torch.Tensor, routed: Routed, num_experts: int) -> Permuted:
    """Whichever form routed it permutes it (ranks present: the kernels)."""
    return permute_triton(x, routed, num_experts) if routed.rank is not None else permute_torch(x, routed, num_experts)
