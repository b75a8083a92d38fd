"""Planted MoE bugs, each a real mistake seen in ports, and one correct implementation in another order.

Every buggy backend routes through `_routing` (used by both its `route` and its `moe` op), so the bug shows in
routing-only, experts-only and whole-layer workloads wherever it applies.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from backends.torch_cpu import TorchCpu
from harness import ops


class _RoutingBug(TorchCpu):
    """Routes with `_routing` (float32), then computes the experts with torch-cpu's own correct code."""

    def _routing(self, logits, *, top_k, scheme, bias, n_group, topk_group, scaling, renormalize):
        return ops.route_scores(
            logits,
            top_k=top_k,
            scheme=scheme,
            bias=bias,
            n_group=n_group,
            topk_group=topk_group,
            scaling=scaling,
            renormalize=renormalize,
        )

    def route(self, logits, *, top_k, scheme, bias=None, n_group=1, topk_group=1, scaling=1.0, renormalize):
        w, ids = self._routing(
            logits.float(),
            top_k=top_k,
            scheme=scheme,
            bias=None if bias is None else bias.float(),
            n_group=n_group,
            topk_group=topk_group,
            scaling=scaling,
            renormalize=renormalize,
        )
        return w.to(logits.dtype), ids

    def moe(self, x, router_w, w_gate, w_up, w_down, *, routing_override=None, return_routing=False, **kw):
        if routing_override is None:
            routing = {k: kw[k] for k in ("top_k", "scheme", "n_group", "topk_group", "scaling", "renormalize")}
            bias = kw.get("bias")
            routing_override = self._routing(
                (x @ router_w.T).float(), bias=None if bias is None else bias.float(), **routing
            )
        out = super().moe(x, router_w, w_gate, w_up, w_down, routing_override=routing_override, **kw)
        return (out, *routing_override) if return_routing else out


class NotRenormalized(_RoutingBug):
    name: ClassVar[str] = "bug-moe-no-renorm"

    def _routing(self, logits, **kw):
        return super()._routing(logits, **{**kw, "renormalize": False})  # the bug: flag ignored


class BiasInWeights(_RoutingBug):
    name: ClassVar[str] = "bug-moe-bias-in-weights"

    def _routing(self, logits, *, top_k, scheme, bias, n_group, topk_group, scaling, renormalize):
        _, choice, _ = ops.selection_scores(logits, scheme=scheme, bias=bias, n_group=n_group, topk_group=topk_group)
        ids = ops.stable_topk_ids(choice, top_k)
        weights = choice.gather(1, ids)  # the bug: biased scores as combine weights, not the raw scores
        if renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * scaling, ids


class IdsOffByOne(_RoutingBug):
    name: ClassVar[str] = "bug-moe-ids-off-by-one"

    def _routing(self, logits, **kw):
        weights, ids = super()._routing(logits, **kw)
        return weights, (ids + 1) % logits.shape[1]  # the bug: 1-based expert ids wrapped into range


class GroupsByMax(_RoutingBug):
    name: ClassVar[str] = "bug-moe-groups-by-max"

    def _routing(self, logits, *, top_k, scheme, bias, n_group, topk_group, scaling, renormalize):
        if scheme != "sigmoid_group_topk" or n_group == 1:
            return super()._routing(
                logits,
                top_k=top_k,
                scheme=scheme,
                bias=bias,
                n_group=n_group,
                topk_group=topk_group,
                scaling=scaling,
                renormalize=renormalize,
            )
        T, E = logits.shape
        scores = torch.sigmoid(logits)
        choice = scores + bias
        group_scores = choice.view(T, n_group, -1).amax(-1)  # the bug: max instead of the sum of the top two
        keep = group_scores.topk(topk_group, dim=-1).indices
        mask = torch.zeros(T, n_group, dtype=torch.bool).scatter_(1, keep, True).repeat_interleave(E // n_group, 1)
        ids = choice.masked_fill(~mask, float("-inf")).topk(top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * scaling, ids


class DroppedMoeToken(TorchCpu):
    name: ClassVar[str] = "bug-moe-dropped-token"

    def moe(self, *args, return_routing=False, **kw):
        result = super().moe(*args, return_routing=return_routing, **kw)
        out = (result[0] if return_routing else result).clone()
        out[-1] = 0  # the bug: the last token's output is lost (an off-by-one in a token loop)
        return (out, *result[1:]) if return_routing else out


class DenseMoe(TorchCpu):
    """Correct, in another order: every expert runs on every token (dense), weights zero where not routed,
    and the k contributions are summed in float32 in expert order rather than by index_add_."""

    name: ClassVar[str] = "dense-moe"

    def moe(
        self,
        x,
        router_w,
        w_gate,
        w_up,
        w_down,
        *,
        routing_override=None,
        return_routing=False,
        shared=None,
        shared_gate=None,
        **kw,
    ):
        T, E = x.shape[0], w_gate.shape[0]
        if routing_override is None:
            bias = kw.get("bias")
            routing = {k: kw[k] for k in ("top_k", "scheme", "n_group", "topk_group", "scaling", "renormalize")}
            weights, ids = ops.route_scores(
                (x @ router_w.T).float(), bias=None if bias is None else bias.float(), **routing
            )
        else:
            weights, ids = routing_override[0].float(), routing_override[1]
        dense = torch.zeros(T, E).scatter_add_(1, ids, weights)  # [T, E] combine weight of each expert
        out = torch.zeros(T, x.shape[1])
        for e in reversed(range(E)):
            y = (torch.nn.functional.silu(x @ w_gate[e].T) * (x @ w_up[e].T)) @ w_down[e].T  # [T, H]
            out += dense[:, e : e + 1] * y.float()
        if shared is not None:
            s = (torch.nn.functional.silu(x @ shared[0].T) * (x @ shared[1].T)) @ shared[2].T
            out += (s * torch.sigmoid(x @ shared_gate.T) if shared_gate is not None else s).float()
        out = out.to(x.dtype)
        return (out, weights, ids) if return_routing else out
