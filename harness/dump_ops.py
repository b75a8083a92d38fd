"""Recomputing dumped calls in float64: the torch-level calls of the kernel contract, and the table that maps a
dump's API names to their recomputation (a backend package adds its own table for its vendor's APIs, registered
under the entry-point group `harness.dump_ops`, as the Ascend backend's is).

Each recomputation takes the call's dumped inputs, computes the documented function of them in float64 and
returns it beside the dumped output, with the op's dtype and reduction length for the budget. A call whose
arguments leave the documented semantics (dropout, an unmodelled option) raises NotJudgedError with the reason.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.dump_read import DumpCall, TensorRef
from harness.lazy import torch
from harness.parity import Failure
from harness.plugins import PluginError, entry_points

# Entry points `name = "module:TABLE"` adding recomputations for a vendor's APIs; the core names no vendor.
DUMP_OPS_GROUP = "harness.dump_ops"
SWIGLU_LOOKBACK = 8  # a multiply is a SwiGLU when one factor is the output of a silu this many calls before


class NotJudgedError(Exception):
    """The call is of a known API but cannot be judged (an option the recomputation does not model)."""


@dataclass(frozen=True)
class Recomputed:
    """A dumped output and its float64 recomputation from the dumped inputs."""

    op: str  # the contract op it is judged as: attention, rms_norm, swiglu, silu, linear, matmul, rope, route...
    out: torch.Tensor  # what the kernel wrote, as dumped
    ref: torch.Tensor  # float64
    dtype: str  # the dtype whose budget applies (the output's)
    reduction_length: int
    extra: tuple[Failure, ...] = ()  # failures beside the output's metrics (routing ids disagreeing)
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What a recomputation may look at besides its call: the calls before it (SwiGLU = silu, then multiply)."""

    calls: Sequence[DumpCall]


Recompute = Callable[[DumpCall, Context], "Recomputed | None"]  # None: not this pattern (listed as not judged)


def load(value: Any) -> Any:
    """A dumped argument with its tensors loaded (lists too)."""
    if isinstance(value, TensorRef):
        return value.load()
    if isinstance(value, list):
        return [load(v) for v in value]
    return value


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def argument(call: DumpCall, position: int, name: str, default: Any = None) -> Any:
    """A call's argument by position or keyword, loaded."""
    if position < len(call.args):
        return load(call.args[position])
    return load(call.kwargs.get(name, default))


def output(call: DumpCall, index: int = 0) -> torch.Tensor:
    """The dumped output tensor `index` (the first of a list output)."""
    value = call.outputs[index] if index < len(call.outputs) else None
    while isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, TensorRef):
        raise NotJudgedError(f"output {index} was not dumped as a tensor")
    return value.load()


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


# ----- torch calls -----


def sdpa(call: DumpCall, _: Context) -> Recomputed:
    """F.scaled_dot_product_attention: bool mask True = attends, float mask added, is_causal top-left, scale
    1/sqrt(D) by default, GQA by repeating kv heads. Rows that see no key are NaN (torch's), not compared."""
    q, k, v = (argument(call, i, n) for i, n in enumerate(("query", "key", "value")))
    mask = argument(call, 3, "attn_mask")
    if float(argument(call, 4, "dropout_p", 0.0) or 0.0) != 0.0:
        raise NotJudgedError("dropout_p > 0 is random: not recomputable")
    causal, scale = bool(argument(call, 5, "is_causal", False)), argument(call, 6, "scale")
    q64, k64, v64 = f64(q), f64(k), f64(v)  # [..., H, L, D], [..., Hkv, S, D], [..., Hkv, S, Dv]
    if k64.dim() >= 3 and q64.shape[-3] != k64.shape[-3]:
        group = q64.shape[-3] // k64.shape[-3]
        k64, v64 = k64.repeat_interleave(group, dim=-3), v64.repeat_interleave(group, dim=-3)
    L, S, D = q64.shape[-2], k64.shape[-2], q64.shape[-1]
    s = (q64 @ k64.transpose(-1, -2)) * (1.0 / math.sqrt(D) if scale is None else float(scale))  # [..., L, S]
    if causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + f64(mask)
    ref = torch.softmax(s, dim=-1) @ v64  # [..., L, Dv]
    out = output(call)
    return Recomputed("attention", out, ref, dtype_name(out), max(S, D), details={"causal": causal})


def rms_norm(call: DumpCall, _: Context) -> Recomputed:
    """F.rms_norm(input, normalized_shape, weight, eps): eps None = the input dtype's machine epsilon."""
    x, shape = argument(call, 0, "input"), argument(call, 1, "normalized_shape")
    w, eps = argument(call, 2, "weight"), argument(call, 3, "eps")
    dims = tuple(range(-len(shape), 0)) if shape else (-1,)
    eps = torch.finfo(x.dtype).eps if eps is None else float(eps)
    x64 = f64(x)
    ref = x64 * torch.rsqrt(x64.pow(2).mean(dim=dims, keepdim=True) + eps)
    ref = ref if w is None else ref * f64(w)
    out = output(call)
    return Recomputed("rms_norm", out, ref, dtype_name(out), math.prod(x.shape[d] for d in dims))


def module_rms_norm(call: DumpCall, _: Context) -> Recomputed:
    """A module-level (L0) *RMSNorm with a `weight` parameter; its eps is not in the dump: 1e-6 is assumed
    (Llama's; a different eps moves a float32 result by ~1e-6 relative at most for unit-scale inputs)."""
    x, w = argument(call, 0, "hidden_states"), load(call.parameters.get("weight"))
    x64 = f64(x)
    ref = x64 * torch.rsqrt(x64.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
    ref = ref if w is None else ref * f64(w)
    out = output(call)
    return Recomputed("rms_norm", out, ref, dtype_name(out), x.shape[-1], details={"eps": "assumed 1e-6"})


def silu(call: DumpCall, _: Context) -> Recomputed:
    x64 = f64(argument(call, 0, "input"))
    out = output(call)
    return Recomputed("silu", out, x64 * torch.sigmoid(x64), dtype_name(out), 1)


def swiglu_mul(call: DumpCall, ctx: Context) -> Recomputed | None:
    """A multiply one of whose factors is a silu's dumped output (bitwise): silu(gate) * up, recomputed from the
    silu's own input. Any other multiply is not a contract op (None: listed as not judged)."""
    factors = [a for a in call.args[:2] if isinstance(a, TensorRef)]
    if len(factors) != 2:
        return None
    for prev in reversed(ctx.calls[max(0, call.index - SWIGLU_LOOKBACK) : call.index]):
        if prev.api != "Functional.silu" or prev.direction != "forward" or not prev.outputs:
            continue
        silu_out = output(prev)
        for i, ref in enumerate(factors):
            if ref.shape == tuple(silu_out.shape) and torch.equal(ref.load(), silu_out):
                gate = f64(argument(prev, 0, "input"))
                up = f64(factors[1 - i].load())
                out = output(call)
                ref64 = gate * torch.sigmoid(gate) * up
                return Recomputed("swiglu", out, ref64, dtype_name(out), 1, details={"silu": prev.name})
    return None


def linear(call: DumpCall, _: Context) -> Recomputed:
    x, w, b = argument(call, 0, "input"), argument(call, 1, "weight"), argument(call, 2, "bias")
    ref = f64(x) @ f64(w).T + (0.0 if b is None else f64(b))
    out = output(call)
    return Recomputed("linear", out, ref, dtype_name(out), x.shape[-1])


def module_linear(call: DumpCall, _: Context) -> Recomputed:
    x = argument(call, 0, "input")
    w, b = load(call.parameters.get("weight")), load(call.parameters.get("bias"))
    if w is None:
        raise NotJudgedError("the module's weight parameter was not dumped")
    ref = f64(x) @ f64(w).T + (0.0 if b is None else f64(b))
    out = output(call)
    return Recomputed("linear", out, ref, dtype_name(out), x.shape[-1])


def matmul(call: DumpCall, _: Context) -> Recomputed:
    a, b = argument(call, 0, "input"), argument(call, 1, "other")
    out = output(call)
    return Recomputed("matmul", out, f64(a) @ f64(b), dtype_name(out), a.shape[-1])


RECOMPUTE: dict[str, Recompute] = {
    "Functional.scaled_dot_product_attention": sdpa,
    "Functional.rms_norm": rms_norm,
    "Torch.rms_norm": rms_norm,
    "Functional.silu": silu,
    "Tensor.__mul__": swiglu_mul,
    "Tensor.mul": swiglu_mul,
    "Torch.mul": swiglu_mul,
    "Functional.linear": linear,
    "Torch.matmul": matmul,
    "Tensor.matmul": matmul,
    "Tensor.__matmul__": matmul,
    "Module.Linear": module_linear,
    "Module.*RMSNorm": module_rms_norm,
}


def recomputations() -> dict[str, Recompute]:
    """The core table and every table of the `harness.dump_ops` entry points; keys are API names or fnmatch
    patterns."""
    table = dict(RECOMPUTE)
    for ref in entry_points(DUMP_OPS_GROUP):
        added = ref.load()
        if not isinstance(added, Mapping):
            raise PluginError(f"{ref.value!r} ({ref.origin}) is {type(added).__name__}, not a table of API names")
        table.update(added)
    return table


def find(api: str, table: Mapping[str, Recompute]) -> Recompute | None:
    if api in table:
        return table[api]
    return next((fn for pattern, fn in table.items() if fnmatch.fnmatchcase(api, pattern)), None)
