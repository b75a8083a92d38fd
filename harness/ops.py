"""The kernel contract: op signatures, input names, and their float64 reference semantics.

Every backend implements these ops with exactly these semantics; the functions here are the oracle the parity
engine compares against. They are written from the math (no fused kernels, no SDPA), compute in float64 on the
host CPU, and validate their inputs so a malformed tensor gets a message naming it instead of a broadcast error.

The op and input names are public API: users pass their own tensors by these names (`--inputs x.safetensors`).
`route` and `moe` take their routing arguments as one RoutingSpec, a forced routing as a Routing and the shared
expert as a SharedExpert (harness/op_types.py); `moe` returns its output with the Routing it applied.
"""

from __future__ import annotations

import math
from typing import Any

from harness import paged
from harness import quant as quant_math
from harness.lazy import torch
from harness.names import ROPE_STYLES

# The contract's value types, re-exported: `from harness.ops import RoutingSpec` is the documented spelling.
from harness.op_types import (
    ContractError,
    Experts,
    MoeArgs,  # noqa: F401 - re-exported with the others
    QuantSpec,
    Routing,
    RoutingSpec,
    SharedExpert,
    require,
)


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
        require(t.dim() == 4, f"attention input {name}: expected 4 dims [B,H,S,D], got shape {list(t.shape)}")
        require(t.is_floating_point(), f"attention input {name}: expected a floating dtype, got {t.dtype}")
    B, Hq, _, D = q.shape
    _, Hkv, Skv, _ = k.shape
    require(
        k.shape[0] == B and k.shape[3] == D,
        f"attention input k: expected shape [{B}, Hkv, Skv, {D}] (B and D of q), got {list(k.shape)}",
    )
    require(
        v.shape[0] == B and v.shape[1] == Hkv and v.shape[2] == Skv,
        f"attention input v: expected shape [{B}, {Hkv}, {Skv}, Dv] (B, Hkv, Skv of k), got {list(v.shape)}",
    )
    require(Hkv > 0 and Hq % Hkv == 0, f"attention: Hq={Hq} must be a multiple of Hkv={Hkv} (GQA/MQA)")
    if window is not None:
        require(causal, "attention: window requires causal=True (sliding windows look back from the diagonal)")
        require(window >= 1, f"attention: window must be >= 1, got {window}")
    if kv_lens is not None:
        require(
            kv_lens.dim() == 1 and kv_lens.shape[0] == B,
            f"attention input kv_lens: expected shape [{B}], got {list(kv_lens.shape)}",
        )
        require(
            not kv_lens.is_floating_point() and not kv_lens.is_complex(),
            f"attention input kv_lens: expected an integer dtype, got {kv_lens.dtype}",
        )
        if kv_lens.numel():  # an empty batch has no lengths to check (min() of nothing raises)
            lo, hi = int(kv_lens.min()), int(kv_lens.max())
            require(lo >= 0 and hi <= Skv, f"attention input kv_lens: values must lie in [0, {Skv}], got [{lo}, {hi}]")


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


REFERENCE_BLOCK_ELEMENTS = 1 << 25  # float64 scores per block of the attention reference (256 MiB)


def attention(
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
    """Reference scaled dot-product attention in float64; returns [B, Hq, Sq, Dv] float64.

    GQA: query head h reads kv head h // (Hq / Hkv). Rows that see no key return zeros. With a block_table, k
    and v are a paged cache, gathered in logical order first (harness/paged.py).
    """
    if block_table is not None:
        paged.check_paged_inputs(q, k, v, block_table, kv_lens)
        assert kv_lens is not None
        k, v = paged.to_contiguous(k, v, block_table, kv_lens)
    check_attention_inputs(q, k, v, causal=causal, window=window, kv_lens=kv_lens)
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q64 = q.detach().to("cpu", torch.float64)  # [B, Hq, Sq, D]
    k64 = k.detach().to("cpu", torch.float64).repeat_interleave(group, dim=1)  # [B, Hq, Skv, D]
    v64 = v.detach().to("cpu", torch.float64).repeat_interleave(group, dim=1)  # [B, Hq, Skv, Dv]
    vis = visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens)[:, None]  # [B,1,Sq,Skv]
    # Query rows are independent: blocks of rows bound the float64 score matrix (real presets: 17 GB at once).
    # With a window, a block of rows sees only a band of keys: scores are computed for that band alone.
    rows = max(1, REFERENCE_BLOCK_ELEMENTS // max(1, B * Hq * Skv))
    if window is not None:
        rows = min(rows, max(window, 16))
    lens = kv_lens.tolist() if kv_lens is not None else [Skv] * B
    out = torch.empty(B, Hq, Sq, v64.shape[-1], dtype=torch.float64)  # [B, Hq, Sq, Dv]
    for start in range(0, Sq, rows):
        block = slice(start, start + rows)
        keys = _key_band(start, min(start + rows, Sq), Sq, Skv, lens, window)
        if keys.stop <= keys.start:  # no row of the block sees a key
            out[:, :, block] = 0.0
            continue
        blk_vis = vis[:, :, block, keys]  # [B, 1, rows, K]
        scores = (q64[:, :, block] @ k64[:, :, keys].transpose(-1, -2)) * scale  # [B, Hq, rows, K]
        scores = scores.masked_fill(~blk_vis, -math.inf)
        row_max = scores.amax(dim=-1, keepdim=True)  # [B, Hq, rows, 1]
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        p = torch.exp(scores - row_max).masked_fill(~blk_vis, 0.0)  # [B, Hq, rows, K]
        denom = p.sum(dim=-1, keepdim=True)  # [B, Hq, rows, 1]
        out[:, :, block] = (p @ v64[:, :, keys]) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out


def latent_views(kv: torch.Tensor, dv: int, *, paged_form: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA's latent cache as attention's k and v, without a copy: one kv head, values its first `dv` columns.

    kv [B, Skv, D] -> k [B, 1, Skv, D], v [B, 1, Skv, Dv]; paged kv [N, BS, D] -> [N, BS, 1, D], [N, BS, 1, Dv]."""
    require(
        kv.dim() == 3,
        f"mla input kv: expected 3 dimensions ([B,Skv,D] or [num_blocks,block_size,D]), got {list(kv.shape)}",
    )
    require(0 < dv < kv.shape[-1], f"mla: dv must lie in [1, D-1] (D = {kv.shape[-1]}), got {dv}")
    k = kv[:, :, None] if paged_form else kv[:, None]
    return k, k[..., :dv]


def mla(
    q: torch.Tensor,
    kv: torch.Tensor,
    *,
    dv: int,
    scale: float,
    causal: bool = True,
    kv_lens: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference absorbed multi-head latent attention (DeepSeek-V2/V3 decode) in float64: [B, H, Sq, Dv].

    Every query head attends to the one latent head: scores q . kv (latent and rope parts together, so D =
    Dv + rope dims) times `scale` (the model's 1 / sqrt(qk head dim before absorption), not 1 / sqrt(D)), values
    the latent part kv[..., :Dv]. With a block_table, kv is a paged cache [num_blocks, block_size, D]."""
    require(q.dim() == 4, f"mla input q: expected [B,H,Sq,D], got {list(q.shape)}")
    require(q.shape[-1] == kv.shape[-1], f"mla: q's D ({q.shape[-1]}) and kv's D ({kv.shape[-1]}) must match")
    k, v = latent_views(kv, dv, paged_form=block_table is not None)
    return attention(q, k, v, causal=causal, scale=scale, kv_lens=kv_lens, block_table=block_table)


def _key_band(first: int, end: int, sq: int, skv: int, lens: list[int], window: int | None) -> slice:
    """The keys query rows [first, end) can see under a window, over every sequence of the batch (all keys
    without one): row i of sequence b sees (i + L_b - Sq - w, i + L_b - Sq]."""
    if window is None:
        return slice(0, skv)
    lo = max(0, first + min(lens) - sq - window + 1)
    hi = min(skv, max(lo, end - 1 + max(lens) - sq + 1))
    return slice(lo, hi)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Reference RMSNorm (Llama convention): x / sqrt(mean(x^2) + eps) * w, over the last dim, in float64."""
    require(
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
    require(x.shape[-1] % 2 == 0, f"rope input x: the last dim must be even, got {x.shape[-1]}")
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
    require(x.shape[-1] % 2 == 0, f"swiglu input x: the last dim must be even, got {x.shape[-1]}")
    x64 = x.detach().to("cpu", torch.float64)
    gate, up = x64.chunk(2, dim=-1)
    return gate * torch.sigmoid(gate) * up


# ----- Mixture of Experts -----


def check_route_args(logits: torch.Tensor, spec: RoutingSpec, bias: torch.Tensor | None) -> None:
    """What a spec alone cannot check: the logits' rank, the spec against the expert count, the bias."""
    require(logits.dim() == 2, f"route input logits: expected 2 dims [T, E], got shape {list(logits.shape)}")
    E = logits.shape[1]
    spec.check(E)
    if bias is not None:
        require(bias.shape == (E,), f"route input bias: expected shape [{E}], got {list(bias.shape)}")
        require(spec.scheme == "sigmoid_group_topk", "route: a correction bias is only defined for sigmoid_group_topk")


def selection_scores(
    logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(scores, choice, group_scores) in the dtype and on the device of `logits`.

    softmax_topk: scores = choice = softmax(logits). sigmoid_group_topk: scores = sigmoid(logits), choice =
    scores + bias (the bias steers SELECTION only), and experts of groups outside the best `topk_group` groups
    (ranked by the sum of each group's top-2 choice values) get choice -inf. Shared by the reference (float64)
    and by torch backends (float32 on their device).
    """
    T, E = logits.shape
    if spec.scheme == "softmax_topk":
        scores = torch.softmax(logits, dim=-1)
        return scores, scores, None
    scores = torch.sigmoid(logits)
    choice = scores + bias.to(logits) if bias is not None else scores
    if spec.n_group == 1:
        return scores, choice, None
    grouped = choice.view(T, spec.n_group, E // spec.n_group)  # [T, G, E/G]
    group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
    keep = stable_topk_ids(group_scores, spec.topk_group)  # [T, topk_group]
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)  # [T, G]
    expert_mask = group_mask.repeat_interleave(E // spec.n_group, dim=1)  # [T, E]
    return scores, choice.masked_fill(~expert_mask, -math.inf), group_scores


def route_scores(logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
    """The routing rule in the dtype and on the device of `logits`: weights [T,k], ids [T,k] int64."""
    scores, choice, _ = selection_scores(logits, spec, bias=bias)
    ids = stable_topk_ids(choice, spec.top_k)  # [T, k]
    weights = scores.gather(1, ids)  # [T, k]
    if spec.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(weights * spec.scaling, ids)


def stable_topk_ids(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest along the last dim; an exact tie goes to the lower index.

    Under torch.export (ONNX export) this is TopK, whose ONNX definition breaks ties the same way; eagerly it is
    a stable sort, since torch.topk promises nothing about ties.
    """
    if torch.compiler.is_exporting():
        return torch.topk(values, k, dim=-1).indices
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]


def route(logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
    """Reference router: weights [T,k] float64, ids [T,k] int64, ids best first.

    Schemes: `softmax_topk` (Mixtral, Qwen2/Qwen3-MoE) and `sigmoid_group_topk` (DeepSeek-V3; see
    selection_scores). The weights are the UNBIASED scores of the chosen experts, divided by their sum when
    `renormalize`, then times `scaling` (routed_scaling_factor). Ties: an exact tie goes to the lower expert
    index (and, between groups, to the lower group index).
    """
    check_route_args(logits, spec, bias)
    b64 = None if bias is None else bias.detach().to("cpu", torch.float64)
    return route_scores(logits.detach().to("cpu", torch.float64), spec, bias=b64)


def _swiglu_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) written from the math, weights in nn.Linear layout: w_gate/w_up [F, H]."""
    gate = x @ w_gate.T  # [N, F]
    return (gate * torch.sigmoid(gate) * (x @ w_up.T)) @ w_down.T  # [N, H]


def _check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    require(tuple(t.shape) == expected, f"moe input {name}: expected shape {list(expected)}, got {list(t.shape)}")


def check_moe_inputs(
    x: torch.Tensor,
    router_w: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    shared: SharedExpert | None = None,
    routing: Routing | None = None,
) -> None:
    """Shapes of the layer's tensors, named as users pass them (shared_w_gate, route_ids, ...)."""
    require(x.dim() == 2, f"moe input x: expected 2 dims [T, H], got shape {list(x.shape)}")
    T, H = x.shape
    E = router_w.shape[0] if router_w.dim() == 2 else -1
    require(
        router_w.dim() == 2 and router_w.shape[1] == H,
        f"moe input router_w: expected shape [E, {H}], got {list(router_w.shape)}",
    )
    F = w_gate.shape[1] if w_gate.dim() == 3 else -1
    for name, t, expected in (("w_gate", w_gate, (E, F, H)), ("w_up", w_up, (E, F, H)), ("w_down", w_down, (E, H, F))):
        _check_shape(name, t, expected)
    if shared is not None:
        Fs = shared.w_gate.shape[0] if shared.w_gate.dim() == 2 else -1
        for name, expected in (("w_gate", (Fs, H)), ("w_up", (Fs, H)), ("w_down", (H, Fs)), ("gate", (1, H))):
            t = getattr(shared, name)
            if t is not None:
                _check_shape("shared_gate" if name == "gate" else f"shared_{name}", t, expected)
    if routing is not None:
        w, ids = routing.weights, routing.ids
        require(
            w.dim() == 2 and w.shape[0] == T, f"moe input route_weights: expected shape [{T}, k], got {list(w.shape)}"
        )
        _check_shape("route_ids", ids, tuple(w.shape))
        require(not ids.is_floating_point(), f"moe input route_ids: expected an integer dtype, got {ids.dtype}")
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            require(lo >= 0 and hi < E, f"moe input route_ids: values must lie in [0, {E - 1}], got [{lo}, {hi}]")


def moe(
    x: torch.Tensor,
    router_w: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    spec: RoutingSpec,
    *,
    bias: torch.Tensor | None = None,
    shared: SharedExpert | None = None,
    routing: Routing | None = None,
    quant: QuantSpec | None = None,
) -> tuple[torch.Tensor, Routing]:
    """Reference MoE layer in float64: [T, H] -> ([T, H], the Routing applied: `routing` itself when given).

    Router logits x @ router_w^T, routed by `route` (unless `routing` is given), each chosen expert a SwiGLU
    MLP, outputs combined with the routing weights; plus the shared expert when given (see `experts`).
    """
    check_moe_inputs(x, router_w, w_gate, w_up, w_down, shared, routing)
    if routing is None:
        logits = x.detach().to("cpu", torch.float64) @ router_w.detach().to("cpu", torch.float64).T  # [T, E]
        routing = route(logits, spec, bias=bias)
    if quant is not None:  # the float64 emulation of the quantized experts (routing stays unquantized)
        return quant_math.emulated_experts(x, Experts(w_gate, w_up, w_down), routing, shared, quant), routing
    return experts(x, Experts(w_gate, w_up, w_down), routing, shared), routing


def experts(x: torch.Tensor, weights: Experts, routing: Routing, shared: SharedExpert | None) -> torch.Tensor:
    """Reference MoE layer after routing, in float64: the chosen experts combined with the routing's weights,
    plus the shared expert when given: [T, H]. Loops over experts, never over tokens."""
    x64 = x.detach().to("cpu", torch.float64)  # [T, H]
    combine = routing.weights.detach().to("cpu", torch.float64)  # [T, k]
    ids = routing.ids.detach().to("cpu", torch.long)  # [T, k]
    out = torch.zeros_like(x64)  # [T, H]
    wg, wu, wd = weights.map(lambda t: t.detach().to("cpu", torch.float64)).tensors()
    for e in torch.unique(ids).tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)  # tokens routed to e, and which of their k slots
        y = _swiglu_mlp(x64[tok], wg[e], wu[e], wd[e])  # [n_e, H]
        out.index_add_(0, tok, y * combine[tok, slot, None])
    if shared is not None:
        out = out + shared.map(lambda t: t.detach().to("cpu", torch.float64)).apply(x64, _swiglu_mlp)  # [T, H]
    return out


def linear(x: torch.Tensor, w: torch.Tensor, *, quant: QuantSpec | None = None) -> torch.Tensor:
    """Reference projection in float64: x [T, K] @ w [N, K]^T -> [T, N]; with `quant`, the float64 emulation
    of exactly that format's computation (harness/quant.py)."""
    require(
        x.dim() == 2 and w.dim() == 2 and x.shape[1] == w.shape[1],
        f"linear: x [T, K] and w [N, K] expected, got {list(x.shape)} and {list(w.shape)}",
    )
    if quant is not None:
        return quant_math.emulated_linear(x.detach().cpu(), w.detach().cpu(), quant)
    return x.detach().to("cpu", torch.float64) @ w.detach().to("cpu", torch.float64).T


# ----- whole models -----


def causal_lm(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Reference logits [B, S, V] float64: the workload model's float64 master run with these reference ops.

    `model` is a built workload model (models/llm.py): it knows its architecture; the harness core does not.
    """
    return model.reference_logits(input_ids)
