"""Recomputing dumped torch_npu calls (msprobe names them NPU.<api>) in float64 for `harness judge`.

No semantics are restated here: each call's dumped arguments are bound to the simulator's function of the same
name (sim.py: real signatures and defaults, layouts, sparse modes, scale 1.0, Ascend's True = masked out) and
that function runs on the float64 inputs inside sim.float64_reference(), which lifts the NPU's dtype refusals
and accumulates in float64. What the simulator does not model is said (NotJudgedError), not guessed.
"""

from __future__ import annotations

import inspect
from typing import Any

from harness.backends.ascend import sim
from harness.dump_ops import Context, NotJudgedError, Recompute, Recomputed, dtype_name, load, output
from harness.dump_read import DumpCall
from harness.lazy import torch
from harness.parity import UNIT_ROUNDOFF, Failure

NEAR_TIE_ROUNDOFFS = 4  # a routing disagreement within this many unit roundoffs of the row's top score is a tie


def _as_f64(value: Any) -> Any:
    """Floating tensors (in lists too) to float64; integer tensors (lengths, ids, group lists) as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64) if value.is_floating_point() else value
    if isinstance(value, list):
        return [_as_f64(v) for v in value]
    return value


def _bound(call: DumpCall, api: str) -> inspect.BoundArguments:
    """The dumped arguments bound to the simulator's signature of `api`, defaults applied, tensors loaded."""
    fn = getattr(sim, api)
    try:
        bound = inspect.signature(fn).bind(
            *(load(a) for a in call.args), **{k: load(v) for k, v in call.kwargs.items()}
        )
    except TypeError as exc:
        raise NotJudgedError(f"arguments do not fit {api}'s signature: {exc}") from None
    bound.apply_defaults()
    return bound


def _run64(api: str, bound: inspect.BoundArguments) -> Any:
    args = [_as_f64(a) for a in bound.args]
    kwargs = {k: _as_f64(v) for k, v in bound.kwargs.items()}
    try:
        with sim.float64_reference():
            return getattr(sim, api)(*args, **kwargs)
    except NotImplementedError as exc:
        raise NotJudgedError(f"not modelled: {exc}") from None


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _attention_reduction(b: dict[str, Any], heads: int) -> int:
    """max(keys per sequence, head dim) from the layout: the attention budget's reduction length."""
    key, layout = b["key"], str(b.get("input_layout", "BSH")).split("_")[0]
    seq = {"BNSD": 2, "BSND": 1, "BSH": 1, "SBH": 0}.get(layout)
    skv = key.shape[seq] if seq is not None else key.shape[0]
    d = b["query"].shape[-1] // heads if layout in ("BSH", "SBH") else b["query"].shape[-1]
    return max(int(skv), int(d))


def _attention(api: str, heads_arg: str) -> Recompute:
    def recompute(call: DumpCall, _: Context) -> Recomputed:
        bound = _bound(call, api)
        ref = _first(_run64(api, bound))
        out = output(call)
        red = _attention_reduction(bound.arguments, int(bound.arguments.get(heads_arg) or 1))
        details = {k: bound.arguments.get(k) for k in ("input_layout", "sparse_mode", "scale") if k in bound.arguments}
        return Recomputed("attention", out, ref, dtype_name(out), red, details=details)

    return recompute


def _elementwise(api: str, op: str, reduction_arg: str | None = None) -> Recompute:
    def recompute(call: DumpCall, _: Context) -> Recomputed:
        bound = _bound(call, api)
        ref = _first(_run64(api, bound))
        out = output(call)
        red = bound.arguments[reduction_arg].shape[-1] if reduction_arg else 1
        return Recomputed(op, out, ref, dtype_name(out), int(red))

    return recompute


def _routing(api: str) -> Recompute:
    """Gating top-k: the expert ids must be the float64 recomputation's per token (as sets), except on a near
    tie; the weights of agreeing tokens are judged like any output (sorted by expert id on both sides)."""

    def recompute(call: DumpCall, _: Context) -> Recomputed:
        bound = _bound(call, api)
        if "out_flag" in bound.arguments:
            bound.arguments["out_flag"] = True  # the float64 scores, for the near-tie test
        y64, ids64, scores = _run64(api, bound)[:3]
        x = bound.arguments["x"]
        y, ids = output(call, 0), output(call, 1).long()
        if api == "npu_moe_gating_top_k_softmax":
            scores = torch.softmax(x.to(torch.float64), dim=-1)
        bias = bound.arguments.get("bias")
        choice = scores + (0.0 if bias is None else bias.to(torch.float64))  # [T, E] selection scores
        same = torch.sort(ids, dim=-1).values.eq(torch.sort(ids64.long(), dim=-1).values).all(dim=-1)  # [T]
        gap = (choice.gather(1, ids64.long()).sum(-1) - choice.gather(1, ids).sum(-1)).abs()  # [T]
        tol = NEAR_TIE_ROUNDOFFS * UNIT_ROUNDOFF.get(dtype_name(x), 2.0**-8) * choice.abs().amax(dim=-1)
        unexplained = int((~same & (gap > tol)).sum())
        order, order64 = ids.argsort(dim=-1), ids64.long().argsort(dim=-1)
        out = y.gather(1, order)[same]  # [T_agree, k]
        ref = y64.gather(1, order64)[same]
        extra = (Failure("routing_unexplained", float(unexplained), 0.0),) if unexplained else ()
        details = {"tokens": int(same.numel()), "agree": int(same.sum()), "near_ties": int((~same).sum()) - unexplained}
        return Recomputed("route", out, ref, dtype_name(y), x.shape[-1], extra=extra, details=details)

    return recompute


def grouped_matmul(call: DumpCall, _: Context) -> Recomputed:
    """MoE form: rows past the group total are garbage by contract and are not compared."""
    bound = _bound(call, "npu_grouped_matmul")
    ref = _first(_run64("npu_grouped_matmul", bound))
    sizes = torch.as_tensor(bound.arguments["group_list"], dtype=torch.int64)
    total = int(sizes.sum()) if bound.arguments.get("group_list_type") == 1 else int(sizes[-1])
    out = output(call)
    k = bound.arguments["x"][0].shape[-1]
    return Recomputed("grouped_matmul", out[:total], ref[:total], dtype_name(out), int(k))


RECOMPUTE: dict[str, Recompute] = {
    "NPU.npu_fusion_attention": _attention("npu_fusion_attention", "head_num"),
    "NPU.npu_fused_infer_attention_score": _attention("npu_fused_infer_attention_score", "num_heads"),
    "NPU.npu_rms_norm": _elementwise("npu_rms_norm", "rms_norm", "x"),
    "NPU.npu_swiglu": _elementwise("npu_swiglu", "swiglu"),
    "NPU.npu_rotary_mul": _elementwise("npu_rotary_mul", "rope"),
    "NPU.npu_moe_gating_top_k": _routing("npu_moe_gating_top_k"),
    "NPU.npu_moe_gating_top_k_softmax": _routing("npu_moe_gating_top_k_softmax"),
    "NPU.npu_grouped_matmul": grouped_matmul,
}
