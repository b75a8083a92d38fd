"""Mixture-of-Experts workloads: the router alone, the experts under a given routing, and the whole layer.

Shapes are named after the routing scheme they reproduce (Mixtral, Qwen3-MoE, Qwen2-MoE with its gated shared
expert, DeepSeek-V3 with grouped sigmoid routing, a selection-only bias and a shared expert); `real` presets
carry those models' dimensions. Parity separates routing from arithmetic: routing is compared token by token
(exact top-k sets, near-ties at the boundary), and the expert arithmetic is judged with the routing forced to
the reference's, so a flipped near-tie is not mistaken for a broken GEMM, nor a broken GEMM excused as a flip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from harness import ops, parity, parity_routing
from harness.dtypes import is_quantized
from harness.lazy import torch
from harness.models.invariance_parts import first_tokens
from harness.models.shapes import MOE_MODELS, MoeDims
from harness.names import OPS, QUANT_FORMATS
from harness.op_types import QuantSpec, Routing, moe_kwargs
from harness.workload import (
    Call,
    CaseInputs,
    Evaluation,
    InvariancePart,
    Outputs,
    Workload,
    WorkloadError,
    evaluate_tensor,
    random_tensor,
)

ROUTER_SCALE = 1.0  # router logits ~ N(0, 1) on normal inputs
BIAS_SCALE = 0.1  # DeepSeek-style correction bias, comparable to the spread of sigmoid scores


@dataclass(frozen=True)
class MoeShape:
    t: int  # tokens
    dims: MoeDims
    quant: QuantSpec | None = None  # a quantized format's case (for_dtype): expert GEMMs in that format

    def describe(self) -> str:
        d = self.dims
        text = f"T{self.t} H{d.h} F{d.f} E{d.e} k{d.top_k} {d.scheme}"
        text += " renorm" if d.renormalize else ""
        text += f" groups {d.topk_group}/{d.n_group}" if d.n_group > 1 else ""
        text += f" x{d.scaling:g}" if d.scaling != 1.0 else ""
        text += " bias" if d.bias else ""
        text += f" shared{d.shared_f}" + ("(gated)" if d.shared_gate else "") if d.shared_f else ""
        return text

    def active_experts(self) -> float:
        """Expected number of experts receiving at least one token under uniform routing."""
        d = self.dims
        return d.e * (1.0 - (1.0 - d.top_k / d.e) ** self.t)


def _weights(shape: MoeShape, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, torch.Tensor]:
    """x (the only input that follows the distribution) and layer weights scaled so activations stay O(1)."""
    d = shape.dims

    def w(name: str, dims: tuple[int, ...], fan_in: int) -> torch.Tensor:
        return random_tensor(dims, dtype, seed=seed, name=name, distribution="normal", scale=fan_in**-0.5)

    tensors = {
        "x": random_tensor((shape.t, d.h), dtype, seed=seed, name="x", distribution=distribution),
        "router_w": w("router_w", (d.e, d.h), d.h) * ROUTER_SCALE,
        "w_gate": w("w_gate", (d.e, d.f, d.h), d.h),
        "w_up": w("w_up", (d.e, d.f, d.h), d.h),
        "w_down": w("w_down", (d.e, d.h, d.f), d.f),
    }
    if d.bias:
        tensors["bias"] = (
            random_tensor((d.e,), torch.float32, seed=seed, name="bias", distribution="normal") * BIAS_SCALE
        )
    if d.shared_f:
        tensors["shared_w_gate"] = w("shared_w_gate", (d.shared_f, d.h), d.h)
        tensors["shared_w_up"] = w("shared_w_up", (d.shared_f, d.h), d.h)
        tensors["shared_w_down"] = w("shared_w_down", (d.h, d.shared_f), d.shared_f)
    if d.shared_gate:
        tensors["shared_gate"] = w("shared_gate", (1, d.h), d.h)
    return tensors


def _router_logits(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Float64 router logits of the exact (rounded) inputs: [T, E]."""
    return inputs["x"].double() @ inputs["router_w"].double().T


def _is_layer_result(result: Any) -> bool:
    """Whether a backend's moe returned what the contract says: (out, the Routing it applied)."""
    return isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Routing)


class _MoeWorkload(Workload):
    """What the three MoE workloads share: shapes, weights, argument packing, FLOP and byte counts."""

    float32_inputs: ClassVar[tuple[str, ...]] = ("bias", "route_weights")

    def op_kwargs(self, shape: MoeShape) -> dict[str, Any]:
        return {"spec": shape.dims.spec, **({"quant": shape.quant} if shape.quant is not None else {})}

    def for_dtype(self, shape: MoeShape, dtype: str) -> MoeShape:
        """A quantized format's case: the experts (and shared expert) in that format, routing unquantized."""
        return replace(shape, quant=QuantSpec(dtype) if is_quantized(dtype) and self.op == "moe" else None)

    def invariance_parts(self, group: CaseInputs) -> tuple[InvariancePart, ...]:
        return first_tokens(group.shape, group.tensors) if self.op == "moe" else ()  # route: judged as routing

    def reduction_length(self, shape: MoeShape) -> int:
        return max(shape.dims.h, shape.dims.f, shape.dims.shared_f)

    def split_args(
        self, inputs: Mapping[str, torch.Tensor], shape: MoeShape
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """The contract takes the shared expert and a given routing as one value each; inputs name them flat."""
        args, kwargs = super().split_args(inputs, shape)
        flat = {n: kwargs.pop(n) for n in OPS[self.op].optional_inputs if n in kwargs}
        return args, {**kwargs, **moe_kwargs(flat)}

    def reference(self, inputs: Mapping[str, torch.Tensor], shape: MoeShape) -> torch.Tensor:
        args, kwargs = self.split_args(inputs, shape)
        return ops.moe(*args, **kwargs)[0]

    def collect(self, call: Call, group: CaseInputs) -> Outputs:
        """The layer's output (moe returns it with its routing; anything else fails as a malformed output)."""
        result = call()
        return {"out": result[0] if _is_layer_result(result) else result}

    def reference_routing(self, group: CaseInputs) -> Routing:
        """The reference's free routing of this group's inputs (float64 weights, ids), computed once."""
        bias, spec = group.tensors.get("bias"), group.shape.dims.spec
        return group.cached("routing", lambda: ops.route(_router_logits(group.tensors), spec, bias=bias))

    def _expert_flops(self, shape: MoeShape) -> float:
        d = shape.dims
        flops = 6.0 * shape.t * d.top_k * d.h * d.f  # gate, up, down of each activated expert
        flops += 6.0 * shape.t * d.h * d.shared_f + (2.0 * shape.t * d.h if d.shared_gate else 0.0)
        return flops

    def _expert_bytes(self, shape: MoeShape, itemsize: int) -> float:
        d = shape.dims
        weights = 3 * shape.active_experts() * d.h * d.f + 3 * d.h * d.shared_f + (d.h if d.shared_gate else 0)
        activations = 2 * shape.t * d.h
        routing = shape.t * d.top_k * (4 + 8)  # float32 weights and int64 ids
        return float((weights + activations) * itemsize + routing)

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: MoeShape) -> MoeShape:
        self.check_input_names(tensors)
        x, w_gate = tensors["x"], tensors["w_gate"]
        if x.dim() != 2 or w_gate.dim() != 3:
            raise WorkloadError(
                f"{self.name}: inputs x [T, H] and w_gate [E, F, H] expected; "
                f"got {list(x.shape)} and {list(w_gate.shape)}"
            )
        has_shared = "shared_w_gate" in tensors
        dims = replace(
            template.dims,
            h=x.shape[1],
            f=w_gate.shape[1],
            e=w_gate.shape[0],
            bias="bias" in tensors,
            shared_f=tensors["shared_w_gate"].shape[0] if has_shared else 0,
            shared_gate="shared_gate" in tensors,
        )
        shape = MoeShape(t=x.shape[0], dims=dims)
        try:
            args, kwargs = self.split_args(tensors, shape)
            ops.check_moe_inputs(*args, kwargs.get("shared"), kwargs.get("routing"))
            ops.check_route_args(torch.empty(0, dims.e), dims.spec, tensors.get("bias"))
        except ops.ContractError as exc:
            raise WorkloadError(f"{self.name}: {exc}") from None
        return shape


class MoeLayer(_MoeWorkload):
    """Route + experts + combine (+ shared expert): the whole layer as a model runs it."""

    op: ClassVar[str] = "moe"
    quant_formats: ClassVar[tuple[str, ...]] = QUANT_FORMATS

    def make_inputs(self, shape: MoeShape, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, torch.Tensor]:
        return _weights(shape, dtype, seed, distribution)

    def forced_routing(self, group: CaseInputs) -> Routing:
        """The reference's routing as handed to the backend: float32 weights, int64 ids."""
        chosen = self.reference_routing(group)
        return Routing(chosen.weights.float(), chosen.ids)

    def reference(self, inputs: Mapping[str, torch.Tensor], shape: MoeShape) -> torch.Tensor:
        """The primary reference: the layer under the reference's routing (weights rounded to float32, as the
        backend receives them), so it measures arithmetic alone."""
        args, kwargs = self.split_args(inputs, shape)
        chosen = ops.route(_router_logits(inputs), shape.dims.spec, bias=inputs.get("bias"))
        return ops.moe(*args, **{**kwargs, "routing": Routing(chosen.weights.float(), chosen.ids)})[0]

    saved_outputs: ClassVar[tuple[str, ...]] = ("out", "free", "routing.weights", "routing.ids")

    def collect(self, call: Call, group: CaseInputs) -> Outputs:
        """Free routing (the layer as a model runs it: output and the routing it applied), then the same layer
        under the reference's routing ("out", the primary: arithmetic alone)."""
        result = call()
        if not _is_layer_result(result):
            return {"result": result}
        out, routing = result
        forced = call(routing=self.forced_routing(group))
        forced_out = forced[0] if _is_layer_result(forced) else forced  # malformed: fails in judge_outputs
        return {"out": forced_out, "free": out, "routing.weights": routing.weights, "routing.ids": routing.ids}

    def judge_outputs(self, outputs: Mapping[str, Any], group: CaseInputs, budget: parity.Budget) -> Evaluation:
        """Routing token by token against the reference's, the free output end to end (and on the tokens whose
        routing agrees), and the forced output as the primary verdict."""
        if "result" in outputs:
            detail = f"moe must return (out, harness.ops.Routing), got {type(outputs['result']).__name__}"
            return Evaluation(None, None, failures=(parity.Failure("output", 0, 0, detail=detail),))
        out, routing = outputs["free"], Routing(outputs["routing.weights"], outputs["routing.ids"])
        shape, dtype = group.shape, group.dtype
        free_ref = group.cached("free_reference", lambda: super(MoeLayer, self).reference(group.tensors, shape))
        ref_routing = self.reference_routing(group)
        near, tol = group.cached(
            "near_ties",
            lambda: parity_routing.routing_near_ties(
                _router_logits(group.tensors), dtype, shape.dims.spec, bias=group.tensors.get("bias")
            ),
        )
        routing_budget = parity.budget_for(dtype, shape.dims.e)
        report, agree, weight_metrics, failures = parity_routing.compare_routing(
            routing, ref_routing, near, tol, routing_budget
        )
        checks: tuple[parity.Check, ...] = ()
        if weight_metrics is not None:
            weights_verdict = parity.judge(weight_metrics, routing_budget, prefix="routing_weights.")
            failures += weights_verdict.failures
            checks += parity.tensor_checks(weight_metrics, routing_budget, prefix="routing_weights.")
        forced = evaluate_tensor(outputs["out"], group.reference(), dtype, budget)
        details: dict[str, Any] = {"routing": report.to_record()}
        e2e = evaluate_tensor(out, free_ref, dtype, budget, prefix="e2e.")
        failures += e2e.failures
        if e2e.metrics is not None:
            details["e2e"] = e2e.metrics.to_record()
            if bool(agree.any()):
                agreeing = parity.compare(out[agree], free_ref[agree], budget)
                details["e2e_agreeing"] = agreeing.to_record()
                failures += parity.judge(agreeing, budget, prefix="e2e_agreeing.").failures
                checks += parity.tensor_checks(agreeing, budget, prefix="e2e_agreeing.")
        return Evaluation(forced.output, forced.metrics, "forced.", failures + forced.failures, details, checks=checks)

    def flops(self, shape: MoeShape) -> float:
        return 2.0 * shape.t * shape.dims.h * shape.dims.e + self._expert_flops(shape)

    def bytes_moved(self, shape: MoeShape, itemsize: int) -> float:
        return self._expert_bytes(shape, itemsize) + shape.dims.e * shape.dims.h * itemsize


class MoeExperts(_MoeWorkload):
    """The experts and the combine under a given routing (the reference's routing of the same x): arithmetic
    alone, as an expert-parallel or grouped-GEMM kernel sees it."""

    op: ClassVar[str] = "moe"
    quant_formats: ClassVar[tuple[str, ...]] = QUANT_FORMATS

    def make_inputs(self, shape: MoeShape, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, torch.Tensor]:
        tensors = _weights(shape, dtype, seed, distribution)
        chosen = ops.route(_router_logits(tensors), shape.dims.spec, bias=tensors.get("bias"))
        tensors["route_weights"] = chosen.weights.float()
        tensors["route_ids"] = chosen.ids
        return tensors

    def flops(self, shape: MoeShape) -> float:
        return self._expert_flops(shape)

    def bytes_moved(self, shape: MoeShape, itemsize: int) -> float:
        return self._expert_bytes(shape, itemsize)


class MoeRoute(_MoeWorkload):
    """The router alone: scores, (grouped) top-k selection, weights; judged as routing, not as a tensor."""

    op: ClassVar[str] = "route"

    def make_inputs(self, shape: MoeShape, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, torch.Tensor]:
        d = shape.dims
        tensors = {
            "logits": random_tensor((shape.t, d.e), dtype, seed=seed, name="logits", distribution=distribution),
        }
        if d.bias:
            tensors["bias"] = (
                random_tensor((d.e,), torch.float32, seed=seed, name="bias", distribution="normal") * BIAS_SCALE
            )
        return tensors

    def split_args(
        self, inputs: Mapping[str, torch.Tensor], shape: MoeShape
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        return Workload.split_args(self, inputs, shape)

    def reference(self, inputs: Mapping[str, torch.Tensor], shape: MoeShape) -> torch.Tensor:
        """The primary reference: the combine weights ordered by expert id (routings compare as sets)."""
        chosen = ops.route(inputs["logits"], shape.dims.spec, bias=inputs.get("bias"))
        return chosen.weights.gather(1, chosen.ids.argsort(dim=-1))

    saved_outputs: ClassVar[tuple[str, ...]] = ("routing.weights", "routing.ids")

    def collect(self, call: Call, group: CaseInputs) -> Outputs:
        result = call()
        if not isinstance(result, Routing):
            return {"result": result}
        return {"routing.weights": result.weights, "routing.ids": result.ids}

    def judge_outputs(self, outputs: Mapping[str, Any], group: CaseInputs, budget: parity.Budget) -> Evaluation:
        """The routing token by token against the reference's; the agreeing tokens' weights as the primary."""
        if "result" in outputs:
            detail = f"route must return a harness.ops.Routing(weights, ids), got {type(outputs['result']).__name__}"
            return Evaluation(None, None, failures=(parity.Failure("output", 0, 0, detail=detail),))
        result = Routing(outputs["routing.weights"], outputs["routing.ids"])
        weights, ids = result.weights, result.ids
        logits, bias, spec = group.tensors["logits"], group.tensors.get("bias"), group.shape.dims.spec
        ref_routing = group.cached("routing", lambda: ops.route(logits, spec, bias=bias))
        near, tol = group.cached(
            "near_ties", lambda: parity_routing.routing_near_ties(logits, group.dtype, spec, bias=bias)
        )
        report, _, weight_metrics, failures = parity_routing.compare_routing(result, ref_routing, near, tol, budget)
        if weight_metrics is None:
            failures += (parity.Failure("routing_weights", 0, 0, detail="no token's routing agrees"),)
        output = weights.gather(1, ids.argsort(dim=-1)) if weights.shape == ids.shape else None
        return Evaluation(output, weight_metrics, "routing_weights.", failures, {"routing": report.to_record()})

    def budget(self, dtype: str, shape: MoeShape, overrides: Mapping[str, float] | None = None) -> parity.Budget:
        return parity.budget_for(dtype, shape.dims.e, dict(overrides or {}))

    def reduction_length(self, shape: MoeShape) -> int:
        return shape.dims.e

    def flops(self, shape: MoeShape) -> float:
        return 5.0 * shape.t * shape.dims.e  # scores and selection: a handful of operations per logit

    def bytes_moved(self, shape: MoeShape, itemsize: int) -> float:
        return float(shape.t * shape.dims.e * itemsize + shape.t * shape.dims.top_k * (itemsize + 8))

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: MoeShape) -> MoeShape:
        self.check_input_names(tensors)
        logits = tensors["logits"]
        if logits.dim() != 2:
            raise WorkloadError(f"{self.name}: input logits: expected 2 dims [T, E], got shape {list(logits.shape)}")
        shape = MoeShape(t=logits.shape[0], dims=replace(template.dims, e=logits.shape[1], bias="bias" in tensors))
        try:
            ops.check_route_args(logits, shape.dims.spec, tensors.get("bias"))
        except ops.ContractError as exc:
            raise WorkloadError(f"{self.name}: {exc}") from None
        return shape


def _scaled(model: str, **dims: Any) -> MoeDims:
    return replace(MOE_MODELS[model], **dims)


# Tiny: CI in seconds, float16 included on a CPU without fp16 arithmetic. Small: CPU benchmarking.
TINY = {
    "mixtral": _scaled("mixtral", h=64, f=128),
    "qwen3-moe": _scaled("qwen3-moe", h=64, f=32, e=16, top_k=4),
    "qwen2-moe": _scaled("qwen2-moe", h=64, f=32, e=8, top_k=2, shared_f=64),
    "deepseek-v3": _scaled("deepseek-v3", h=64, f=32, e=16, top_k=4, n_group=4, topk_group=2, shared_f=32),
}
SMALL = {
    "mixtral": _scaled("mixtral", h=512, f=1024),
    "qwen3-moe": _scaled("qwen3-moe", h=512, f=256, e=32, top_k=4),
    "qwen2-moe": _scaled("qwen2-moe", h=512, f=256, e=16, top_k=4, shared_f=1024),
    "deepseek-v3": _scaled("deepseek-v3", h=512, f=256, e=32, top_k=4, n_group=4, topk_group=2, shared_f=256),
}
REAL_TOKENS = {"mixtral": 4096, "qwen3-moe": 8192, "qwen2-moe": 4096, "deepseek-v3": 8192}


def _presets() -> dict[str, dict[str, MoeShape]]:
    return {
        "tiny": {name: MoeShape(t=64, dims=dims) for name, dims in TINY.items()},
        "small": {name: MoeShape(t=256, dims=dims) for name, dims in SMALL.items()},
        "real": {name: MoeShape(t=REAL_TOKENS[name], dims=dims) for name, dims in MOE_MODELS.items()},
    }


def workloads() -> list[Workload]:
    """The built-in MoE workloads (the `harness.workloads` entry point)."""
    return [
        MoeRoute("moe.route", _presets(), "the router alone: scores, (grouped) top-k, weights; judged as routing"),
        MoeExperts(
            "moe.experts", _presets(), "SwiGLU experts and the weighted combine under a given routing (arithmetic)"
        ),
        MoeLayer(
            "moe.layer",
            _presets(),
            "route + experts + combine (+ shared expert); routing and arithmetic judged apart",
        ),
    ]
