"""The float64 oracle as a backend: harness.ops on the host CPU, output rounded to the case dtype.

Run beside the others it shows the floor of the parity metrics (the error of rounding a perfect result to the
case dtype) and the cost of the naive math. It is written from the math, never from a fast path.
"""

from __future__ import annotations

import platform
from typing import Any, ClassVar

from harness import ops
from harness import quant as quant_math
from harness.backend import Availability, Backend
from harness.lazy import torch
from harness.names import QUANT_FORMATS
from harness.op_types import Experts, QuantSpec, Routing, RoutingSpec, SharedExpert


class CpuReference(Backend):
    name: ClassVar[str] = "cpu-reference"
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float64", "float32", "bfloat16", "float16", *QUANT_FORMATS})
    description: ClassVar[str] = "float64 oracle (harness.ops) on the host CPU, rounded to the case dtype"
    oracle: ClassVar[bool] = True

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to("cpu")

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu")

    def synchronize(self) -> None:
        """Host computation is synchronous."""

    def environment(self) -> dict[str, Any]:
        return {"torch": torch.__version__, "device_name": platform.processor() or platform.machine()}

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = False,
        window: int | None = None,
        scale: float | None = None,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = ops.attention(
            q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens, block_table=block_table
        )
        return out.to(q.dtype)

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        return ops.rms_norm(x, w, eps).to(x.dtype)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
        return ops.rope(x, cos, sin, style).to(x.dtype)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        return ops.swiglu(x).to(x.dtype)

    def route(self, logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
        chosen = ops.route(logits, spec, bias=bias)
        return Routing(chosen.weights.to(logits.dtype), chosen.ids)

    def router_logits(self, x: torch.Tensor, router_w: torch.Tensor) -> torch.Tensor:
        return x.double() @ router_w.double().T  # [T, E] float64: the reference routes on exact logits

    def experts(self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None) -> torch.Tensor:
        return ops.experts(x, experts, routing, shared).to(x.dtype)

    def linear(self, x: torch.Tensor, w: torch.Tensor, *, quant: QuantSpec | None = None) -> torch.Tensor:
        return ops.linear(x, w, quant=quant).to(x.dtype)

    def quant_experts(
        self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None, quant: QuantSpec
    ) -> torch.Tensor:
        """The format's float64 emulation (harness/quant.py), rounded to the output dtype."""
        return quant_math.emulated_experts(x, experts, routing, shared, quant).to(x.dtype)

    def causal_lm(self, model: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        return model.run(self, input_ids, cache=cache, return_model=return_model)
