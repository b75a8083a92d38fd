"""The kernel contract: op signatures, input names, and their float64 reference semantics.

Every backend implements these ops with exactly these semantics; the functions here are the oracle the parity
engine compares against. They are written from the math (no fused kernels, no SDPA), compute in float64 on the
host CPU, and validate their inputs so a malformed tensor gets a message naming it instead of a broadcast error.

The op and input names are public API: users pass their own tensors by these names (`--inputs x.safetensors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class ContractError(ValueError):
    """Inputs that violate the kernel contract (wrong rank, inconsistent dims, bad dtype)."""


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
    )
}

ROPE_STYLES = ("half", "interleave")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ContractError(message)


def check_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    window: int | None,
    kv_lens: torch.Tensor | None,
) -> None:
    """Validate the attention signature; messages name the tensor, what was expected and what was given."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require(t.dim() == 4, f"attention input {name}: expected 4 dims [B,H,S,D], got shape {list(t.shape)}")
        _require(t.is_floating_point(), f"attention input {name}: expected a floating dtype, got {t.dtype}")
    B, Hq, _, D = q.shape
    _, Hkv, Skv, _ = k.shape
    _require(
        k.shape[0] == B and k.shape[3] == D,
        f"attention input k: expected shape [{B}, Hkv, Skv, {D}] (B and D of q), got {list(k.shape)}",
    )
    _require(
        v.shape[0] == B and v.shape[1] == Hkv and v.shape[2] == Skv,
        f"attention input v: expected shape [{B}, {Hkv}, {Skv}, Dv] (B, Hkv, Skv of k), got {list(v.shape)}",
    )
    _require(Hkv > 0 and Hq % Hkv == 0, f"attention: Hq={Hq} must be a multiple of Hkv={Hkv} (GQA/MQA)")
    if window is not None:
        _require(causal, "attention: window requires causal=True (sliding windows look back from the diagonal)")
        _require(window >= 1, f"attention: window must be >= 1, got {window}")
    if kv_lens is not None:
        _require(
            kv_lens.dim() == 1 and kv_lens.shape[0] == B,
            f"attention input kv_lens: expected shape [{B}], got {list(kv_lens.shape)}",
        )
        _require(
            not kv_lens.is_floating_point() and not kv_lens.is_complex(),
            f"attention input kv_lens: expected an integer dtype, got {kv_lens.dtype}",
        )
        lo, hi = int(kv_lens.min()), int(kv_lens.max())
        _require(lo >= 0 and hi <= Skv, f"attention input kv_lens: values must lie in [0, {Skv}], got [{lo}, {hi}]")


def visible_keys(
    sq: int,
    skv: int,
    *,
    batch: int = 1,
    causal: bool = False,
    window: int | None = None,
    kv_lens: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Which keys each query sees: bool [B, Sq, Skv], True = visible (torch SDPA's convention).

    Key j is visible from query i of sequence b iff j < L_b and, when causal, j <= i + (L_b - Sq) (bottom-right
    alignment: the last query sees the last valid key), and, with a window w, j > i + (L_b - Sq) - w.
    """
    i = torch.arange(sq, device=device).view(1, sq, 1)  # [1, Sq, 1]
    j = torch.arange(skv, device=device).view(1, 1, skv)  # [1, 1, Skv]
    if kv_lens is None:
        lens = torch.full((batch,), skv, dtype=torch.long, device=device)
    else:
        lens = kv_lens.to(device=device, dtype=torch.long)
    lens = lens.view(-1, 1, 1)  # [B, 1, 1]
    vis = j < lens  # [B, 1, Skv]
    if causal:
        diag = i + (lens - sq)  # [B, Sq, 1]: the last key query i may see
        vis = vis & (j <= diag)
        if window is not None:
            vis = vis & (j > diag - window)
    return vis.expand(lens.shape[0], sq, skv)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    kv_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference scaled dot-product attention in float64; returns [B, Hq, Sq, Dv] float64.

    GQA: query head h reads kv head h // (Hq / Hkv). Rows that see no key return zeros.
    """
    check_attention_inputs(q, k, v, causal=causal, window=window, kv_lens=kv_lens)
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q64 = q.detach().to("cpu", torch.float64)  # [B, Hq, Sq, D]
    k64 = k.detach().to("cpu", torch.float64).repeat_interleave(group, dim=1)  # [B, Hq, Skv, D]
    v64 = v.detach().to("cpu", torch.float64).repeat_interleave(group, dim=1)  # [B, Hq, Skv, Dv]
    vis = visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens)[:, None]  # [B,1,Sq,Skv]
    scores = (q64 @ k64.transpose(-1, -2)) * scale  # [B, Hq, Sq, Skv]
    scores = scores.masked_fill(~vis, -math.inf)
    row_max = scores.amax(dim=-1, keepdim=True)  # [B, Hq, Sq, 1]
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(scores - row_max).masked_fill(~vis, 0.0)  # [B, Hq, Sq, Skv]
    denom = p.sum(dim=-1, keepdim=True)  # [B, Hq, Sq, 1]
    out = (p @ v64) / torch.where(denom > 0, denom, torch.ones_like(denom))  # [B, Hq, Sq, Dv]
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Reference RMSNorm (Llama convention): x / sqrt(mean(x^2) + eps) * w, over the last dim, in float64."""
    _require(
        w.dim() == 1 and w.shape[0] == x.shape[-1], f"rms_norm input w: expected [{x.shape[-1]}], got {list(w.shape)}"
    )
    x64 = x.detach().to("cpu", torch.float64)
    rstd = torch.rsqrt(x64.pow(2).mean(dim=-1, keepdim=True) + eps)  # [..., 1]
    return x64 * rstd * w.detach().to("cpu", torch.float64)


def rotate(x: torch.Tensor, style: str) -> torch.Tensor:
    """The partner term of rotary embedding: half -> cat(-x2, x1); interleave -> (-x1, x0, -x3, x2, ...)."""
    if style == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    if style == "interleave":
        pairs = x.unflatten(-1, (-1, 2))  # [..., D/2, 2]
        return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    raise ContractError(f"rope: style {style!r} is not one of: {', '.join(ROPE_STYLES)}")


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
    """Reference rotary embedding: x * cos + rotate(x) * sin, in float64.

    cos / sin have the full head dim D and are laid out to match the style (half: cat(c, c); interleave: each
    frequency repeated twice), the convention of transformers and of torch_npu's npu_rotary_mul.
    """
    _require(x.shape[-1] % 2 == 0, f"rope input x: the last dim must be even, got {x.shape[-1]}")
    for name, t in (("cos", cos), ("sin", sin)):
        try:
            torch.broadcast_shapes(t.shape, x.shape)
        except RuntimeError:
            raise ContractError(
                f"rope input {name}: shape {list(t.shape)} does not broadcast to x {list(x.shape)}"
            ) from None
    x64 = x.detach().to("cpu", torch.float64)
    c64 = cos.detach().to("cpu", torch.float64)
    s64 = sin.detach().to("cpu", torch.float64)
    return x64 * c64 + rotate(x64, style) * s64


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """Reference SwiGLU on a fused [..., 2F] input: silu(first half) * second half (npu_swiglu's convention)."""
    _require(x.shape[-1] % 2 == 0, f"swiglu input x: the last dim must be even, got {x.shape[-1]}")
    x64 = x.detach().to("cpu", torch.float64)
    gate, up = x64.chunk(2, dim=-1)
    return gate * torch.sigmoid(gate) * up
