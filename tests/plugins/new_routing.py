"""A third-party backend written from the README's "Writing a backend" example of route / moe (RoutingSpec in,
Routing out, the shared expert through SharedExpert.apply), with torch standing in for the vendor SDK."""

from __future__ import annotations

from typing import ClassVar

import torch

from harness import ops
from harness.backend import Availability
from harness.ops import Routing, RoutingSpec, SharedExpert
from harness.torch_backend import TorchBackend


class ReadmeRouter(TorchBackend):
    name: ClassVar[str] = "readme-router"

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True)

    def route(self, logits, spec: RoutingSpec, *, bias=None) -> Routing:
        chosen = ops.route_scores(logits.float(), spec, bias=None if bias is None else bias.float())
        return Routing(chosen.weights.to(logits.dtype), chosen.ids)  # the vendor's top-k router

    def moe(
        self,
        x,
        router_w,
        w_gate,
        w_up,
        w_down,
        spec: RoutingSpec,
        *,
        bias=None,
        shared: SharedExpert | None = None,
        routing: Routing | None = None,
    ):
        if routing is None:
            routing = self.route(x @ router_w.T, spec, bias=bias)
        out = torch.zeros(x.shape, dtype=torch.float32)  # the vendor's grouped experts: here a loop over slots
        for slot in range(routing.ids.shape[1]):
            e = routing.ids[:, slot]  # [T]
            gate = torch.einsum("th,tfh->tf", x, w_gate[e])
            hidden = torch.nn.functional.silu(gate) * torch.einsum("th,tfh->tf", x, w_up[e])  # [T, F]
            out += routing.weights[:, slot, None].float() * torch.einsum("tf,thf->th", hidden, w_down[e]).float()
        if shared is not None:
            out += shared.apply(x).float()  # the shared expert, with the default SwiGLU MLP
        return out.to(x.dtype), routing  # always the routing applied
