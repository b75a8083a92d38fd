"""The names and defaults people type on the command line, in suite files and in their tensor files (the ops of
the kernel contract and their input names).

Kept free of torch and of every other heavy import, so that `harness --help` and argument checking start in a
fraction of a second; the modules that compute import their vocabulary from here.
"""

from __future__ import annotations

from dataclasses import dataclass

# The name this project installs under (the import name and console script are `harness`; `harness` itself
# belongs to an unrelated project on the public index).
DIST_NAME = "infer-parity-harness"

DTYPE_NAMES = ("float64", "float32", "bfloat16", "float16")  # case dtypes (harness.backend.DTYPES maps them)
DISTRIBUTIONS = ("normal", "stress")  # input distributions
REPORT_FORMATS = ("md", "csv", "latex", "html")
DEFAULT_AGAINST_RATIO = 2.0  # --against: a candidate may have at most this multiple of the baseline's error


@dataclass(frozen=True)
class OpSpec:
    """An op of the contract: its tensor inputs (positional, in order) and optional tensor keywords."""

    name: str
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...] = ()
    summary: str = ""


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "attention",
            ("q", "k", "v"),
            ("kv_lens",),
            "q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv] -> [B,Hq,Sq,Dv]; GQA, bottom-right causal, window",
        ),
        OpSpec("rms_norm", ("x", "w"), (), "x [..., H], w [H] -> x / rms(x) * w"),
        OpSpec("rope", ("x", "cos", "sin"), (), "x [..., S, D], cos/sin broadcastable to x; half or interleave"),
        OpSpec("swiglu", ("x",), (), "x [..., 2F] -> silu(x[..., :F]) * x[..., F:]"),
        OpSpec(
            "route",
            ("logits",),
            ("bias",),
            "logits [T,E] -> (weights [T,k], ids [T,k]); softmax_topk or sigmoid_group_topk",
        ),
        OpSpec(
            "moe",
            ("x", "router_w", "w_gate", "w_up", "w_down"),
            ("bias", "shared_w_gate", "shared_w_up", "shared_w_down", "shared_gate", "route_weights", "route_ids"),
            "x [T,H] -> [T,H]: route, SwiGLU experts, weighted combine, optional (gated) shared expert",
        ),
        OpSpec(
            "causal_lm",
            ("input_ids",),
            (),
            "model (a built workload model), input_ids [B,S] -> logits [B,S,V]; the model's own layers",
        ),
    )
}

ROUTING_SCHEMES = ("softmax_topk", "sigmoid_group_topk")

ROPE_STYLES = ("half", "interleave")


class BadInputError(ValueError):
    """Input the user gave that cannot be used (an unknown name, a malformed file): the CLI exits 2 with the
    message, no traceback. Every such error of the harness derives from this one class."""


def split_values(values: tuple[str, ...]) -> list[str]:
    """Options accept repeats and comma lists alike: -b a,b -b c."""
    return [item.strip() for v in values for item in v.split(",") if item.strip()]
