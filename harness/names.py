"""The names and defaults people type on the command line, in suite files and in their tensor files (the ops of
the kernel contract and their input names).

Kept free of torch and of every other heavy import, so that `harness --help` and argument checking start in a
fraction of a second; the modules that compute import their vocabulary from here.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# The name this project installs under (the import name and console script are `harness`; `harness` itself
# belongs to an unrelated project on the public index).
DIST_NAME = "infer-parity-harness"

FLOAT_DTYPE_NAMES = ("float64", "float32", "bfloat16", "float16")
# Quantized inference formats (harness/quant.py): case "dtypes" whose inputs and output are bfloat16 (the carrier)
# and whose matmuls run in the format; each has its own budget row, judged against the format's float64 emulation.
QUANT_FORMATS = ("w8a8", "fp8", "fp8-block")
QUANT_CARRIER = "bfloat16"  # the dtype a quantized case's inputs are generated in and its output is returned in
DTYPE_NAMES = FLOAT_DTYPE_NAMES + QUANT_FORMATS  # case dtypes (harness.backend.DTYPES maps them)
# Other spellings people type for a name the harness knows, which string similarity alone does not find
# (`fp16` is closer to nothing than to `float16`): suggested, never accepted silently.
ALIASES = {
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "fp64": "float64",
    "f64": "float64",
    "double": "float64",
    "int8": "w8a8",
    "w8a8_int8": "w8a8",
    "fp8_e4m3": "fp8",
    "e4m3": "fp8",
    "fp8_block": "fp8-block",
}
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
    # Input name -> its dimensions' names ("B,Hq,Sq,D"), for messages and rank checks; absent: any rank.
    layouts: Mapping[str, str] = field(default_factory=dict)
    integer_inputs: tuple[str, ...] = ()  # inputs of an integer dtype (lengths, ids); every other one is floating


# The weights of op llm_tp, in its positional order (harness/tensor_parallel_lm.py DecoderWeights).
_DECODER_WEIGHTS = ("embed", "attn_norm", "w_q", "w_k", "w_v", "w_o", "mlp_norm", "w_gate", "w_up", "w_down",
                    "final_norm", "lm_head")  # fmt: skip

_MOE_LAYOUTS = {
    "x": "T,H",
    "router_w": "E,H",
    "w_gate": "E,F,H",
    "w_up": "E,F,H",
    "w_down": "E,H,F",
    "bias": "E",
    "shared_w_gate": "Fs,H",
    "shared_w_up": "Fs,H",
    "shared_w_down": "H,Fs",
    "shared_gate": "1,H",
    "route_weights": "T,k",
    "route_ids": "T,k",
}

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "attention",
            ("q", "k", "v"),
            ("kv_lens", "block_table"),
            "q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv] -> [B,Hq,Sq,Dv]; GQA, bottom-right causal, window;"
            " paged: k/v [num_blocks,block_size,Hkv,D], block_table [B,max_blocks], kv_lens required",
            {"q": "B,Hq,Sq,D", "k": "B,Hkv,Skv,D", "v": "B,Hkv,Skv,Dv", "kv_lens": "B", "block_table": "B,MaxBlocks"},
            ("kv_lens", "block_table"),
        ),
        OpSpec(
            "mla",
            ("q", "kv"),
            ("kv_lens", "block_table"),
            "q [B,H,Sq,D], kv [B,Skv,D] (a latent cache: one kv head shared by all H; D = Dv + rope dims) ->"
            " [B,H,Sq,Dv]: attention with keys kv and values kv[..., :Dv] (absorbed MLA); bottom-right causal;"
            " paged: kv [num_blocks,block_size,D], block_table [B,max_blocks], kv_lens required",
            {"q": "B,H,Sq,D", "kv": "B,Skv,D", "kv_lens": "B", "block_table": "B,MaxBlocks"},
            ("kv_lens", "block_table"),
        ),
        OpSpec(
            "linear",
            ("x", "w"),
            (),
            "x [T,K], w [N,K] -> x @ w^T [T,N]; quantized formats: quant=QuantSpec (harness/quant.py)",
            {"x": "T,K", "w": "N,K"},
        ),
        OpSpec("rms_norm", ("x", "w"), (), "x [..., H], w [H] -> x / rms(x) * w"),
        OpSpec("rope", ("x", "cos", "sin"), (), "x [..., S, D], cos/sin broadcastable to x; half or interleave"),
        OpSpec("swiglu", ("x",), (), "x [..., 2F] -> silu(x[..., :F]) * x[..., F:]"),
        OpSpec(
            "route",
            ("logits",),
            ("bias",),
            "logits [T,E] -> (weights [T,k], ids [T,k]); softmax_topk or sigmoid_group_topk",
            {"logits": "T,E", "bias": "E"},
        ),
        OpSpec(
            "moe",
            ("x", "router_w", "w_gate", "w_up", "w_down"),
            ("bias", "shared_w_gate", "shared_w_up", "shared_w_down", "shared_gate", "route_weights", "route_ids"),
            "x [T,H] -> [T,H]: route, SwiGLU experts, weighted combine, optional (gated) shared expert",
            _MOE_LAYOUTS,
            ("route_ids",),
        ),
        OpSpec(
            "moe_ep",
            ("x", "router_w", "w_gate", "w_up", "w_down"),
            ("bias", "shared_w_gate", "shared_w_up", "shared_w_down", "shared_gate", "route_weights", "route_ids"),
            "moe across the ranks of a process group (group=): experts partitioned, tokens dispatched with"
            " all_to_all; x [T,H] -> [T,H] on every rank",
            _MOE_LAYOUTS,
            ("route_ids",),
        ),
        OpSpec(
            "attention_tp",
            ("q", "k", "v"),
            (),
            "attention across the ranks of a process group (group=): heads split (GQA groups whole), output"
            " gathered; q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv] -> [B,Hq,Sq,Dv] on every rank",
            {"q": "B,Hq,Sq,D", "k": "B,Hkv,Skv,D", "v": "B,Hkv,Skv,Dv"},
        ),
        OpSpec(
            "llm_tp",
            ("input_ids", *_DECODER_WEIGHTS),
            (),
            "a pre-norm decoder (RMSNorm, rope attention, SwiGLU MLP, LM head) tensor-parallel across the ranks of a"
            " process group (group=): column/row-parallel projections, vocab-parallel logits; input_ids [B,S] ->"
            " logits [B,S,V] on every rank",
            {
                "input_ids": "B,S",
                "embed": "V,H",
                "attn_norm": "L,H",
                "w_q": "L,Hq*D,H",
                "w_k": "L,Hkv*D,H",
                "w_v": "L,Hkv*D,H",
                "w_o": "L,H,Hq*D",
                "mlp_norm": "L,H",
                "w_gate": "L,F,H",
                "w_up": "L,F,H",
                "w_down": "L,H,F",
                "final_norm": "H",
                "lm_head": "V,H",
            },
            ("input_ids",),
        ),
        OpSpec(
            "causal_lm",
            ("input_ids",),
            (),
            "model (a built workload model), input_ids [B,S] -> logits [B,S,V]; the model's own layers",
            {"input_ids": "B,S"},
            ("input_ids",),
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


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A hint for an unknown name: "; did you mean 'float16'?" (an alias, a different case, a near spelling or,
    for a glob pattern, a near pattern), or "" when nothing is close. Every lookup of a typed name uses it."""
    known = list(dict.fromkeys(known))
    if not known:
        return ""
    folded = {k.lower(): k for k in known}
    key = name.strip().lower()
    exact = [c for c in (ALIASES.get(key), folded.get(key)) if c in known and c != name]
    if exact:  # an alias, or the same name in another case: that one, nothing else
        candidates = exact
    elif any(ch in name for ch in "*?["):  # a glob: compare with the families' patterns too (attention.*)
        families = [f"{k.split('.')[0]}.*" for k in known if "." in k]
        candidates = difflib.get_close_matches(name, list(dict.fromkeys(families + known)), n=2, cutoff=0.6)
    else:
        candidates = [folded[c] for c in difflib.get_close_matches(key, list(folded), n=2, cutoff=0.6)]
    hits = [c for c in dict.fromkeys(candidates) if c != name and not fnmatch.fnmatchcase(c, name)]
    if not hits:
        return ""
    return "; did you mean " + " or ".join(repr(h) for h in hits[:2]) + "?"


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """The one-line answer to a name that is not known: what was given, the accepted names, the nearest one."""
    known = list(known)
    return f"unknown {kind} {name!r}: not one of: {', '.join(known)}{did_you_mean(name, known)}"
