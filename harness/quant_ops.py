"""The quantized ops of the kernel contract on Backend (a mixin, so backend.py stays one job): `linear` (also
unquantized) and the quantized MoE layer, `Backend.moe` with `quant=` set. A backend that lists a quantized
format in its `dtypes` implements `linear` and `quant_experts` (the experts quantized by the format's rules,
harness/quant.py); one that does not is never handed a quantized case (it skips, naming the dtype)."""

from __future__ import annotations

from harness.lazy import torch
from harness.op_types import Experts, MoeArgs, QuantSpec, Routing, SharedExpert


class QuantOps:
    """`linear(x, w, *, quant=None)` and the quantized MoE (`moe_layer_quant` -> `quant_experts`)."""

    name: str

    def linear(self, x: torch.Tensor, w: torch.Tensor, *, quant: QuantSpec | None = None) -> torch.Tensor:
        """x [T, K] @ w [N, K]^T -> [T, N] in the dtype of x; with `quant`, in that format (quantize x per its
        activation rule and w per its weight rule, exact products, dequantize, output bfloat16)."""
        raise NotImplementedError(f"{self.name} does not implement linear")

    def applied_routing(self, args: MoeArgs) -> Routing:
        """The given routing, else `route` on `router_logits` (the default layers' first step, quantized or not)."""
        if args.routing is not None:
            return args.routing
        return self.route(self.router_logits(args.x, args.router_w), args.spec, bias=args.bias)  # type: ignore[attr-defined]

    def moe_layer_quant(self, args: MoeArgs) -> tuple[torch.Tensor, Routing]:
        """The MoE layer in a quantized format: routed unquantized (`applied_routing`), then `quant_experts`."""
        routing = self.applied_routing(args)
        assert args.quant is not None
        return self.quant_experts(args.x, args.experts, routing, args.shared, args.quant), routing

    def quant_experts(
        self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None, quant: QuantSpec
    ) -> torch.Tensor:
        """`Backend.experts` in a quantized format (see harness.quant.emulated_experts for the function)."""
        raise NotImplementedError(f"{self.name} does not implement the quantized MoE ({quant.format})")
