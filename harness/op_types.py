"""The value types of the kernel contract: what a routing is asked to do, what it decided, a shared expert.

`route` and `moe` (harness/ops.py, every backend) take a `RoutingSpec` instead of a list of keywords, return a
`Routing` instead of a bare (weights, ids) pair, and take the shared expert as one `SharedExpert`; so the routing
vocabulary is written once and a new routing argument is a field here, not an edit of every backend. Torch-free
at import (the CLI validates a spec before torch loads); users still name the tensors flat in their input files
(`shared_w_gate`, `route_ids`, ...): `moe_kwargs` packs them, `moe_inputs` unpacks them again for exporters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from harness.lazy import F, torch
from harness.names import QUANT_FORMATS, ROUTING_SCHEMES

if TYPE_CHECKING:
    Tensor = torch.Tensor


class ContractError(ValueError):
    """Inputs that violate the kernel contract (wrong rank, inconsistent dims, bad dtype)."""


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ContractError(message)


@dataclass(frozen=True, kw_only=True)
class RoutingSpec:
    """How a router picks experts: the non-tensor arguments of `route` and `moe` (the bias is a tensor input).

    top_k experts per token; scheme `softmax_topk` (Mixtral, Qwen) or `sigmoid_group_topk` (DeepSeek-V3: the
    experts split into n_group groups of which the best topk_group are kept); the combine weights divided by
    their sum when `renormalize`, then times `scaling` (routed_scaling_factor). Checked on construction as far
    as no expert count is needed; `check(num_experts)` does the rest.
    """

    top_k: int
    scheme: str
    n_group: int = 1
    topk_group: int = 1
    scaling: float = 1.0
    renormalize: bool

    def __post_init__(self) -> None:
        require(
            self.scheme in ROUTING_SCHEMES,
            f"route: scheme {self.scheme!r} is not one of: {', '.join(ROUTING_SCHEMES)}",
        )
        require(_is_int(self.top_k) and self.top_k >= 1, f"route: top_k must be an integer >= 1, got {self.top_k!r}")
        require(
            _is_int(self.n_group) and self.n_group >= 1, f"route: n_group must be an integer >= 1, got {self.n_group!r}"
        )
        require(
            _is_int(self.topk_group) and 1 <= self.topk_group <= self.n_group,
            f"route: topk_group must lie in [1, n_group={self.n_group}], got {self.topk_group!r}",
        )
        require(
            isinstance(self.scaling, (int, float)) and math.isfinite(self.scaling),
            f"route: scaling must be a finite number, got {self.scaling!r}",
        )
        require(
            isinstance(self.renormalize, bool), f"route: renormalize must be True or False, got {self.renormalize!r}"
        )

    def check(self, num_experts: int) -> None:
        """The checks that need the expert count E (the logits' last dim, router_w's first)."""
        E, G = num_experts, self.n_group
        require(1 <= self.top_k <= E, f"route: top_k must lie in [1, {E}], got {self.top_k}")
        require(E % G == 0, f"route: n_group={G} must divide the {E} experts")
        kept = self.topk_group * (E // G)
        require(self.top_k <= kept, f"route: top_k={self.top_k} exceeds the {kept} experts of the kept groups")
        if G > 1:
            require(E // G >= 2, "route: groups are ranked by their top-2 scores, so need >= 2 experts each")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


T = TypeVar("T", bound="TensorGroup")


class TensorGroup:
    """A frozen dataclass of tensors (and Nones) that moves as one: to a device, to the host, compared bitwise."""

    def tensors(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    def map(self: T, fn: Callable[[Tensor], Tensor]) -> T:
        """The same group with `fn` applied to each tensor (Nones stay)."""
        changes = {f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None}  # type: ignore[arg-type]
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, eq=False)
class Routing(TensorGroup):
    """A routing decision: per token, k expert ids (best first) and their combine weights."""

    weights: Tensor  # [T, k]
    ids: Tensor  # [T, k] int64


@dataclass(frozen=True, eq=False)
class Experts(TensorGroup):
    """The routed experts' weights, nn.Linear layout per expert (what Backend.experts computes with)."""

    w_gate: Tensor  # [E, F, H]
    w_up: Tensor  # [E, F, H]
    w_down: Tensor  # [E, H, F]


@dataclass(frozen=True)
class QuantSpec:
    """A quantized format as an op receives it (`quant=`; harness/quant.py has the math). The op gets the
    unquantized weights and quantizes them itself by the format's documented rule, as a port does."""

    format: str  # one of QUANT_FORMATS
    block: int = 128  # fp8-block: weight blocks block x block, activation groups 1 x block

    def __post_init__(self) -> None:
        require(
            self.format in QUANT_FORMATS, f"quant: format {self.format!r} is not one of: {', '.join(QUANT_FORMATS)}"
        )
        require(_is_int(self.block) and self.block >= 1, f"quant: block must be an integer >= 1, got {self.block!r}")


@dataclass(frozen=True, eq=False)
class MoeArgs:
    """One MoE layer call's arguments as one value: what Backend.moe hands to `moe_layer`, the hook a kernel
    that routes inside (a fused MoE op, an exported graph) overrides instead of `route` + `experts`."""

    x: Tensor  # [T, H]
    router_w: Tensor  # [E, H]
    experts: Experts
    spec: RoutingSpec
    bias: Tensor | None = None  # [E]: selection bias (sigmoid_group_topk)
    shared: SharedExpert | None = None
    routing: Routing | None = None  # given: apply it as is (and return it)
    quant: QuantSpec | None = None  # a quantized format (Backend.moe_layer_quant), None: the case dtype


def swiglu_mlp(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """down(silu(gate(x)) * up(x)), weights in nn.Linear layout (w_gate/w_up [F, H], w_down [H, F]): [N, H]."""
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


Mlp = Callable[["Tensor", "Tensor", "Tensor", "Tensor"], "Tensor"]  # (x, w_gate, w_up, w_down) -> [N, H]


@dataclass(frozen=True, eq=False)
class SharedExpert(TensorGroup):
    """An expert every token goes through (Qwen2-MoE, DeepSeek-V3), added to the routed experts' output."""

    w_gate: Tensor  # [Fs, H]
    w_up: Tensor  # [Fs, H]
    w_down: Tensor  # [H, Fs]
    gate: Tensor | None = None  # [1, H]: Qwen2-MoE scales the output by sigmoid(x @ gate^T); DeepSeek has none

    def apply(self, x: Tensor, mlp: Mlp = swiglu_mlp) -> Tensor:
        """Its output [T, H] in the dtype of x; `mlp` computes the SwiGLU MLP the backend's way (fused kernels)."""
        out = mlp(x, self.w_gate, self.w_up, self.w_down)  # [T, H]
        if self.gate is not None:
            out = out * torch.sigmoid(x @ self.gate.T)  # [T, 1] gate
        return out


SHARED_NAMES = ("shared_w_gate", "shared_w_up", "shared_w_down")
ROUTING_NAMES = ("route_weights", "route_ids")


def moe_kwargs(inputs: Mapping[str, Tensor]) -> dict[str, Any]:
    """The optional moe tensors as users name them (flat: bias, shared_w_*, shared_gate, route_*) packed into
    the contract's keywords (bias, shared, routing)."""
    kwargs: dict[str, Any] = {}
    if "bias" in inputs:
        kwargs["bias"] = inputs["bias"]
    if any(n in inputs for n in SHARED_NAMES):
        missing = [n for n in SHARED_NAMES if n not in inputs]
        require(not missing, f"moe: a shared expert needs {', '.join(SHARED_NAMES)}; missing {', '.join(missing)}")
        kwargs["shared"] = SharedExpert(*(inputs[n] for n in SHARED_NAMES), gate=inputs.get("shared_gate"))
    else:
        require("shared_gate" not in inputs, "moe: shared_gate needs a shared expert")
    if any(n in inputs for n in ROUTING_NAMES):
        missing = [n for n in ROUTING_NAMES if n not in inputs]
        require(not missing, f"moe: a given routing needs {' and '.join(ROUTING_NAMES)}; missing {', '.join(missing)}")
        kwargs["routing"] = Routing(inputs["route_weights"], inputs["route_ids"])
    return kwargs


def moe_inputs(bias: Tensor | None, shared: SharedExpert | None, routing: Routing | None) -> dict[str, Tensor]:
    """The inverse of moe_kwargs: the present optional tensors under their input names, in the contract's order."""
    named: dict[str, Tensor | None] = {"bias": bias}
    if shared is not None:
        named.update(zip(SHARED_NAMES, shared.tensors()[:3], strict=True), shared_gate=shared.gate)
    if routing is not None:
        named.update(route_weights=routing.weights, route_ids=routing.ids)
    return {n: t for n, t in named.items() if t is not None}
