"""A CPU simulator of the torch_npu API subset the Ascend adapter uses, faithful to ../shared/ascend-api.md.

Functions carry torch_npu's real names, signatures (the misspelled `pre_tockens` / `next_tockens` included),
defaults (scale 1.0, not 1/sqrt(D)), return arities, layouts and mask convention (True = masked OUT). They
compute on the CPU with float32 accumulation and round outputs to the input dtype, and refuse float64 as the
NPU does. What the simulator does not model raises NotImplementedError naming it, instead of guessing.
`npu` is a `torch.npu`-like facade (synchronize, Event with elapsed_time in ms, device queries).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from harness import ops, paged
from harness.backends.ascend import sim_mla, sim_quant
from harness.backends.ascend.sim_moe_distribute import npu_moe_distribute_combine, npu_moe_distribute_dispatch  # noqa: F401
from harness.backends.ascend.sim_quant import *  # noqa: F403 - the quantized ops, as torch_npu names them
from harness.lazy import torch

__version__ = "2.13.0+sim"
SOC_NAME = "Ascend910B-sim"
MAX_TOKENS = 2147483647
COMPRESSED_MASK = 2048  # sparse modes 2/3/4 take a compressed 2048 x 2048 upper-triangular mask


# The precision the simulated kernels accumulate in: float32 as on the NPU, or float64 inside float64_reference()
# (harness judge recomputes dumped torch_npu calls with these very functions: the same semantics, no copy).
_ACCUMULATE: ContextVar[bool] = ContextVar("sim_float64_reference", default=False)


def _acc() -> torch.dtype:
    return torch.float64 if _ACCUMULATE.get() else torch.float32


@contextmanager
def float64_reference() -> Iterator[None]:
    """Within it the functions take float64 inputs and compute in float64 (the dtype refusals of the NPU are
    lifted): a float64 oracle of each call with the simulator's documented semantics."""
    token = _ACCUMULATE.set(True)
    try:
        yield
    finally:
        _ACCUMULATE.reset(token)


def _no_float64(*tensors: torch.Tensor | None) -> None:
    if _ACCUMULATE.get():
        return
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            raise TypeError("float64 is not supported on the NPU (no fp64 on the AI Core)")


# ----- attention -----


def _to_bnsd(t: torch.Tensor, layout: str, heads: int) -> torch.Tensor:
    """[B, N, S, D] view of a tensor in BSH / SBH / BSND / BNSD."""
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        B, S, H = t.shape
        return t.view(B, S, heads, H // heads).transpose(1, 2)
    if layout == "SBH":
        S, B, H = t.shape
        return t.view(S, B, heads, H // heads).permute(1, 2, 0, 3)
    raise NotImplementedError(f"input_layout {layout!r} is not modelled by the simulator")


def _paged_to_bnsd(
    cache: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    lens_kv: list[int] | None,
    layout: str,
    heads: int,
) -> torch.Tensor:
    """FIA's paged KV (ascend-api.md): cache (num_blocks, block_size, H_kv) for BSH / BSND, (num_blocks, KV_N,
    block_size, D) for BNSD; each sequence reads the first ceil(len / block_size) entries of its row, in order."""
    if lens_kv is None:
        raise ValueError("npu_fused_infer_attention_score: block_table needs actual_seq_lengths_kv")
    if block_table.dtype != torch.int32 or block_table.dim() != 2:
        raise TypeError(
            f"block_table: expected int32 [B, max_blocks], got {block_table.dtype} {list(block_table.shape)}"
        )
    if not 0 < block_size <= 512:
        raise ValueError(f"block_size must lie in [1, 512] with a block_table, got {block_size}")
    if layout == "BNSD":
        if cache.dim() != 4 or cache.shape[2] != block_size:
            raise ValueError(f"paged BNSD cache: expected (num_blocks, KV_N, {block_size}, D), got {list(cache.shape)}")
        blocks = cache.transpose(1, 2)  # (num_blocks, block_size, KV_N, D)
    elif layout in ("BSH", "BSND"):
        if cache.dim() != 3 or cache.shape[1] != block_size:
            raise ValueError(
                f"paged {layout} cache: expected (num_blocks, {block_size}, H_kv), got {list(cache.shape)}"
            )
        blocks = cache.view(cache.shape[0], block_size, heads, cache.shape[2] // heads)
    else:
        raise NotImplementedError(f"paged KV in input_layout {layout!r} is not modelled by the simulator")
    return paged.gather(blocks, block_table, torch.tensor(lens_kv, dtype=torch.long))  # [B, KV_N, MB * BS, D]


def _from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    B, N, S, D = t.shape
    if layout == "BNSD":
        return t.contiguous()
    if layout == "BSND":
        return t.transpose(1, 2).contiguous()
    if layout == "BSH":
        return t.transpose(1, 2).reshape(B, S, N * D)
    if layout == "SBH":
        return t.permute(2, 0, 1, 3).reshape(S, B, N * D)
    raise NotImplementedError(f"output layout {layout!r} is not modelled by the simulator")


def _band_masked(sq: int, skv: int, pre: int, nxt: int, origin_offset: int) -> torch.Tensor:
    """True where key j is OUTSIDE the band i + off - pre <= j <= i + off + next: [Sq, Skv]."""
    i = torch.arange(sq).view(-1, 1) + origin_offset
    j = torch.arange(skv).view(1, -1)
    return (j < i - min(pre, MAX_TOKENS)) | (j > i + min(nxt, MAX_TOKENS))


def _check_compressed(atten_mask: torch.Tensor | None, sparse_mode: int) -> None:
    if atten_mask is None:
        raise ValueError(
            f"sparse_mode {sparse_mode} needs the compressed {COMPRESSED_MASK}x{COMPRESSED_MASK} atten_mask"
        )
    if tuple(atten_mask.shape[-2:]) != (COMPRESSED_MASK, COMPRESSED_MASK):
        raise ValueError(
            f"sparse_mode {sparse_mode} takes a {COMPRESSED_MASK}x{COMPRESSED_MASK} compressed mask, "
            f"got {list(atten_mask.shape)}"
        )


def _masked_for(
    sq: int, skv: int, atten_mask: torch.Tensor | None, sparse_mode: int, pre: int, nxt: int
) -> torch.Tensor | None:
    """One sequence's masked-out positions [.., Sq, Skv] (True = masked) for a sparse mode."""
    if sparse_mode == 0:
        if atten_mask is None:
            return None  # no mask: full attention, pre/next ignored
        band = _band_masked(sq, skv, pre, nxt, 0)
        return atten_mask.bool()[..., :sq, :skv] | band
    if sparse_mode == 1:
        return None if atten_mask is None else atten_mask.bool()[..., :sq, :skv]
    if sparse_mode == 2:
        _check_compressed(atten_mask, 2)
        return torch.ones(sq, skv, dtype=torch.bool).triu(diagonal=1)  # leftUpCausal
    if sparse_mode == 3:
        _check_compressed(atten_mask, 3)
        return torch.ones(sq, skv, dtype=torch.bool).triu(diagonal=skv - sq + 1)  # rightDownCausal
    if sparse_mode == 4:
        _check_compressed(atten_mask, 4)
        return _band_masked(sq, skv, pre, nxt, skv - sq)  # band, origin bottom-right
    raise NotImplementedError(f"sparse_mode {sparse_mode} (prefix / varlen variants) is not modelled by the simulator")


def _sdpa_masked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masked: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax(scale * q k^T, masked out) v in float32; q [N, Sq, D], k/v [N, Skv, D]. Rows with no visible key
    give zeros (the real value is UNCONFIRMED in ascend-api.md; the adapter must not rely on it)."""
    s = (q.to(_acc()) @ k.to(_acc()).transpose(-1, -2)) * scale  # [N, Sq, Skv]
    if masked is not None:
        s = s.masked_fill(masked, -math.inf)
    row_max = s.amax(dim=-1, keepdim=True)
    safe = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(s - safe)
    total = p.sum(dim=-1, keepdim=True)
    out = (p @ v.to(_acc())) / torch.where(total > 0, total, torch.ones_like(total))
    return out, safe, total


def _attention_per_batch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lens_q: list[int],
    lens_kv: list[int],
    atten_mask: torch.Tensor | None,
    sparse_mode: int,
    pre: int,
    nxt: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BNSD attention with per-sequence valid lengths; GQA maps query head h to kv head h // (Nq / Nkv)."""
    B, Nq, Sq, _ = q.shape
    Nkv = k.shape[1]
    if Nq % Nkv:
        raise ValueError(f"GQA needs num_heads % num_key_value_heads == 0, got {Nq} and {Nkv}")
    group = Nq // Nkv
    out = torch.zeros(B, Nq, Sq, v.shape[-1], dtype=_acc())
    mx = torch.zeros(B, Nq, Sq, 1)
    sm = torch.zeros(B, Nq, Sq, 1)
    for b in range(B):  # per sequence: each has its own lengths and alignment
        lq, lk = lens_q[b], lens_kv[b]
        if lk == 0 or lq == 0:
            continue  # nothing visible: zeros (the real op's value for such rows is unconfirmed)
        mask_b = atten_mask
        if atten_mask is not None and atten_mask.dim() == 4:  # BNSS / B1SS / 11SS
            mask_b = atten_mask[b if atten_mask.shape[0] > 1 else 0]
        masked = _masked_for(lq, lk, mask_b, sparse_mode, pre, nxt)
        kb = k[b, :, :lk].repeat_interleave(group, dim=0)
        vb = v[b, :, :lk].repeat_interleave(group, dim=0)
        o, m, s = _sdpa_masked(q[b, :, :lq], kb, vb, masked, scale)
        out[b, :, :lq], mx[b, :, :lq], sm[b, :, :lq] = o, m, s
    return out, mx, sm


def npu_fusion_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    head_num: int,
    input_layout: str,
    pse: torch.Tensor | None = None,
    padding_mask: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    scale: float = 1.0,
    keep_prob: float = 1.0,
    pre_tockens: int = 2147483647,
    next_tockens: int = 2147483647,
    inner_precise: int = 0,
    prefix: Any = None,
    actual_seq_qlen: list[int] | None = None,
    actual_seq_kvlen: list[int] | None = None,
    sparse_mode: int = 0,
    gen_mask_parallel: bool = True,
    sync: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Training-style fused attention (A2+): 7 outputs (out, softmax_max, softmax_sum, reserved, seed, offset,
    mask_len). fp16, bf16 and fp32; layouts BSH, SBH, BSND, BNSD and TND (cumulative lengths)."""
    _no_float64(query, key, value)
    if pse is not None or padding_mask is not None or prefix is not None:
        raise NotImplementedError("pse, padding_mask and prefix are not modelled by the simulator")
    if keep_prob != 1.0:
        raise NotImplementedError("dropout (keep_prob < 1) is not modelled by the simulator")
    if atten_mask is None:
        sparse_mode, pre_tockens, next_tockens = 0, MAX_TOKENS, MAX_TOKENS  # ignored without a mask
    if input_layout == "TND":
        out, mx, sm = _tnd(
            query,
            key,
            value,
            head_num,
            atten_mask,
            sparse_mode,
            pre_tockens,
            next_tockens,
            scale,
            actual_seq_qlen,
            actual_seq_kvlen,
        )
        return (out, mx, sm, torch.zeros(0), 0, 0, 0)
    q = _to_bnsd(query, input_layout, head_num)
    k = _to_bnsd(key, input_layout, _kv_heads(key, query, head_num, input_layout))
    v = _to_bnsd(value, input_layout, k.shape[1])
    B, _, Sq, _ = q.shape
    out, mx, sm = _attention_per_batch(
        q,
        k,
        v,
        lens_q=[Sq] * B,
        lens_kv=[k.shape[2]] * B,
        atten_mask=atten_mask,
        sparse_mode=sparse_mode,
        pre=pre_tockens,
        nxt=next_tockens,
        scale=scale,
    )
    return (
        _from_bnsd(out.to(query.dtype), input_layout),
        mx.expand(*mx.shape[:-1], 8).contiguous(),  # fp32 [B, N, Sq, 8], as the real op returns
        sm.expand(*sm.shape[:-1], 8).contiguous(),
        torch.zeros(0, dtype=query.dtype),
        0,
        0,
        0,
    )


def _kv_heads(key: torch.Tensor, query: torch.Tensor, head_num: int, layout: str) -> int:
    if layout == "BNSD":
        return key.shape[1]
    if layout in ("BSH", "SBH"):
        head_dim = query.shape[-1] // head_num
        return key.shape[-1] // head_dim
    return key.shape[2]


def _tnd(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    head_num: int,
    atten_mask: torch.Tensor | None,
    sparse_mode: int,
    pre: int,
    nxt: int,
    scale: float,
    cum_q: list[int] | None,
    cum_kv: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TND varlen: query [T, N, D]; actual_seq_qlen / actual_seq_kvlen are CUMULATIVE (2,2,2 -> 2,4,6)."""
    if cum_q is None or cum_kv is None:
        raise ValueError("input_layout TND needs actual_seq_qlen and actual_seq_kvlen (cumulative lengths)")
    if len(cum_q) != len(cum_kv) or any(b < a for a, b in zip([0, *cum_q], cum_q, strict=False)):
        raise ValueError(f"TND lengths must be cumulative and non-decreasing; got {cum_q} and {cum_kv}")
    out = torch.zeros(query.shape[0], query.shape[1], value.shape[-1], dtype=_acc())
    mx = torch.zeros(query.shape[0], query.shape[1], 1)
    sm = torch.zeros(query.shape[0], query.shape[1], 1)
    starts_q, starts_kv = [0, *cum_q[:-1]], [0, *cum_kv[:-1]]
    for qs, qe, ks, ke in zip(starts_q, cum_q, starts_kv, cum_kv, strict=True):
        q = query[qs:qe].transpose(0, 1)[None]  # [1, N, Sq, D]
        k = key[ks:ke].transpose(0, 1)[None]
        v = value[ks:ke].transpose(0, 1)[None]
        o, m, s = _attention_per_batch(
            q,
            k,
            v,
            lens_q=[qe - qs],
            lens_kv=[ke - ks],
            atten_mask=atten_mask,
            sparse_mode=sparse_mode,
            pre=pre,
            nxt=nxt,
            scale=scale,
        )
        out[qs:qe], mx[qs:qe], sm[qs:qe] = o[0].transpose(0, 1), m[0].transpose(0, 1), s[0].transpose(0, 1)
    return out.to(query.dtype), mx, sm


def npu_fused_infer_attention_score(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    pse_shift: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    actual_seq_lengths: list[int] | None = None,
    actual_seq_lengths_kv: list[int] | None = None,
    block_table: torch.Tensor | None = None,
    num_heads: int = 1,
    scale: float = 1.0,
    pre_tokens: int = 2147483647,
    next_tokens: int = 2147483647,
    input_layout: str = "BSH",
    num_key_value_heads: int = 0,
    sparse_mode: int = 0,
    inner_precise: int = 0,
    block_size: int = 0,
    softmax_lse_flag: bool = False,
    **unmodelled: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inference fused attention (FIA): (out, softmax_lse). Query fp16 / bf16 only (fp32 rejected).
    Sq == 1 is the incremental (decode) path, same math. Per-sequence lengths through actual_seq_lengths(_kv)."""
    if any(unmodelled.get(name) is not None for name in sim_mla.ROPE_ARGS):
        return sim_mla.fused_infer_mla(dict(locals()), _acc())  # the MLA branch: every argument, as passed
    _no_float64(query, key, value)
    if query.dtype not in (torch.float16, torch.bfloat16) and not _ACCUMULATE.get():
        raise TypeError(f"npu_fused_infer_attention_score: query dtype must be float16 or bfloat16, got {query.dtype}")
    if used := {k for k, v in {**unmodelled, "pse_shift": pse_shift}.items() if v is not None}:
        raise NotImplementedError(f"npu_fused_infer_attention_score arguments not modelled: {sorted(used)}")
    kv_heads = num_key_value_heads or num_heads
    layout_in = input_layout.split("_", maxsplit=1)[0]
    layout_out = input_layout.split("_")[1] if "_" in input_layout else layout_in
    if layout_in == "TND":
        out, _, _ = _tnd(
            query,
            key,
            value,
            num_heads,
            atten_mask,
            sparse_mode,
            pre_tokens,
            next_tokens,
            scale,
            actual_seq_lengths,
            actual_seq_lengths_kv,
        )
        return out, torch.zeros(1)
    q = _to_bnsd(query, layout_in, num_heads)
    B, _, Sq, _ = q.shape
    if block_table is None:
        k, v = (_to_bnsd(t, layout_in, kv_heads) for t in (key, value))
    elif Sq > 1 and block_size % 128:  # ascend-api.md: the prompt path (Q seq > 1) takes multiples of 128
        raise ValueError(f"paged KV with Q seq > 1 (prefill): block_size must be a multiple of 128, got {block_size}")
    else:
        k, v = (
            _paged_to_bnsd(t, block_table, block_size, actual_seq_lengths_kv, layout_in, kv_heads) for t in (key, value)
        )
    lens_q = list(actual_seq_lengths) if actual_seq_lengths is not None else [Sq] * B
    lens_kv = list(actual_seq_lengths_kv) if actual_seq_lengths_kv is not None else [k.shape[2]] * B
    if atten_mask is None and sparse_mode in (0, 1):
        pre_tokens = next_tokens = MAX_TOKENS
    out, mx, sm = _attention_per_batch(
        q,
        k,
        v,
        lens_q=lens_q,
        lens_kv=lens_kv,
        atten_mask=atten_mask,
        sparse_mode=sparse_mode,
        pre=pre_tokens,
        nxt=next_tokens,
        scale=scale,
    )
    lse = (mx + torch.log(sm.clamp(min=1e-30))) if softmax_lse_flag else torch.zeros(1)
    return _from_bnsd(out.to(query.dtype), layout_out), lse


# ----- MoE -----


def npu_moe_gating_top_k_softmax(
    x: torch.Tensor, finished: torch.Tensor | None = None, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over experts, then top-k (ties: lower index first). NOT renormalized. (y in x's dtype,
    expert_idx int32 [N, k], row_idx int32 [N, k] with row_idx[n, j] = j * N + n)."""
    _no_float64(x)
    if finished is not None:
        raise NotImplementedError("the `finished` mask is not modelled by the simulator")
    probs = torch.softmax(x.to(_acc()), dim=-1)
    idx = ops.stable_topk_ids(probs, k)
    N = x.shape[0]
    row_idx = (torch.arange(k).view(1, k) * N + torch.arange(N).view(N, 1)).to(torch.int32)
    return probs.gather(1, idx).to(x.dtype), idx.to(torch.int32), row_idx


def npu_moe_gating_top_k(
    x: torch.Tensor,
    k: int,
    *,
    bias: torch.Tensor | None = None,
    k_group: int = 1,
    group_count: int = 1,
    group_select_mode: int = 0,
    renorm: int = 0,
    norm_type: int = 0,
    out_flag: bool = False,
    routed_scaling_factor: float = 1.0,
    eps: float = 1e-20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(y, expert_idx int32, norm_out): norm_type 0 softmax / 1 sigmoid; bias for SELECTION only; groups ranked
    by max (mode 0) or the sum of the top two (mode 1); keep k_group groups; top-k; y gathered from the unbiased
    scores; y /= (sum y + eps) ONLY for norm_type 1; then y *= routed_scaling_factor."""
    _no_float64(x, bias)
    if renorm not in (0, 1):
        raise NotImplementedError(f"renorm={renorm} is not modelled by the simulator")
    scores = torch.softmax(x.to(_acc()), dim=-1) if norm_type == 0 else torch.sigmoid(x.to(_acc()))
    choice = scores + bias.to(_acc()) if bias is not None else scores.clone()
    N, E = choice.shape
    if group_count > 1:
        grouped = choice.view(N, group_count, E // group_count)
        if group_select_mode == 0:
            group_scores = grouped.amax(dim=-1)
        elif group_select_mode == 1:
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        else:
            raise NotImplementedError(f"group_select_mode {group_select_mode} is not modelled by the simulator")
        keep = ops.stable_topk_ids(group_scores, k_group)
        group_mask = torch.zeros(N, group_count, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~group_mask.repeat_interleave(E // group_count, dim=1), -math.inf)
    idx = ops.stable_topk_ids(choice, k)
    y = scores.gather(1, idx)
    if norm_type == 1:
        y = y / (y.sum(dim=-1, keepdim=True) + eps)
    y = y * routed_scaling_factor
    return y.to(x.dtype), idx.to(torch.int32), scores if out_flag else None


def npu_moe_init_routing_v2(
    x: torch.Tensor,
    expert_idx: torch.Tensor,
    *,
    active_num: int = -1,
    expert_capacity: int = -1,
    expert_num: int = -1,
    drop_pad_mode: int = 0,
    expert_tokens_num_type: int = 0,
    expert_tokens_num_flag: bool = False,
    quant_mode: int = -1,
    active_expert_range: list[int] | None = None,
    row_idx_type: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(expanded_x, expanded_row_idx, expert_tokens, expanded_scale): the N*K (token, slot) pairs sorted by
    expert, stably in ROW-MAJOR source order n*K + k; expanded_x[i] = x[src_i // K]; expanded_row_idx[src] is
    where source slot src landed (int32); expert_tokens are cumulative (type 0) or counts (type 1)."""
    _no_float64(x)
    if drop_pad_mode != 0 or expert_capacity != -1:
        raise NotImplementedError("drop / pad mode and expert capacity are not modelled by the simulator")
    if quant_mode != -1 or active_expert_range or row_idx_type != 0:
        raise NotImplementedError("quantization, active_expert_range and row_idx_type != 0 are not modelled")
    N, K = expert_idx.shape
    flat = expert_idx.reshape(-1).long()  # source order n*K + k
    order = torch.argsort(flat, stable=True)  # order[i] = source slot at destination i
    dst = torch.empty_like(order)
    dst[order] = torch.arange(order.numel())
    count = active_num if active_num >= 0 else N * K
    expanded_x = x[order[:count] // K]
    tokens = None
    if expert_tokens_num_flag:
        num = expert_num if expert_num > 0 else int(flat.max()) + 1
        counts = torch.bincount(flat, minlength=num)[:num]
        tokens = counts if expert_tokens_num_type == 1 else counts.cumsum(0)
        tokens = tokens.to(torch.int64)
    return expanded_x, dst.to(torch.int32), tokens, None


def npu_grouped_matmul(
    x: list[torch.Tensor],
    weight: list[torch.Tensor],
    *,
    bias: list[torch.Tensor] | None = None,
    group_list: torch.Tensor | list[int] | None = None,
    split_item: int = 0,
    group_type: int | None = None,
    group_list_type: int = 0,
    act_type: int = 0,
    output_dtype: torch.dtype | None = None,
    **unmodelled: Any,
) -> list[torch.Tensor]:
    """MoE form: x = [h [M, K]], weight = [w [E, K, N]], group_type 0, split_item 2 or 3 -> [out [M, N]];
    group_list cumulative (group_list_type 0) or counts (1). Rows past the group total are garbage (NaN here,
    so an adapter that reads them fails loudly)."""
    if x and x[0].dtype == torch.int8:  # the W8A8 form, in sim_quant.py
        return sim_quant.grouped_matmul_quant(dict(locals()))  # every argument, as passed
    if len(x) != 1 or len(weight) != 1 or group_type != 0 or split_item not in (2, 3):
        raise NotImplementedError("only the MoE form (one x, one [E,K,N] weight, group_type 0, split_item 2/3)")
    if bias is not None or act_type != 0 or any(v is not None for v in unmodelled.values()):
        raise NotImplementedError("bias, fused activation and quantization of npu_grouped_matmul are not modelled")
    h, w = x[0], weight[0]
    _no_float64(h, w)
    if group_list is None:
        raise ValueError("npu_grouped_matmul MoE form needs group_list")
    sizes = torch.as_tensor(group_list, dtype=torch.int64)
    ends = sizes.cumsum(0) if group_list_type == 1 else sizes
    out = torch.full((h.shape[0], w.shape[-1]), float("nan"), dtype=_acc())
    start = 0
    for e, end in enumerate(ends.tolist()):
        if end > start:
            out[start:end] = h[start:end].to(_acc()) @ w[e].to(_acc())
        start = end
    return [out.to(output_dtype or h.dtype)]


def npu_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """silu(first half) * second half along `dim`, computed in float32."""
    _no_float64(x)
    a, b = x.to(_acc()).chunk(2, dim=dim)
    return (torch.nn.functional.silu(a) * b).to(x.dtype)


def npu_moe_token_unpermute(
    permuted_tokens: torch.Tensor,
    sorted_indices: torch.Tensor,
    probs: torch.Tensor | None = None,
    padded_mode: bool = False,
    restore_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """out[n] = sum_k probs[n, k] * permuted_tokens[sorted_indices[n*K + k]], accumulated in float32."""
    _no_float64(permuted_tokens, probs)
    if padded_mode:
        raise NotImplementedError("padded_mode is not modelled by the simulator")
    if probs is not None:
        N, K = probs.shape
        weights = probs.to(_acc())
    elif restore_shape is not None:
        N = restore_shape[0]
        K = sorted_indices.numel() // N
        weights = torch.ones(N, K)
    else:
        raise ValueError("npu_moe_token_unpermute needs probs or restore_shape")
    gathered = permuted_tokens.to(_acc())[sorted_indices.long().view(N, K)]  # [N, K, H]
    return (gathered * weights[..., None]).sum(dim=1).to(permuted_tokens.dtype)


# ----- norms and rotary -----


def npu_rms_norm(x: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): computed in float32, y cast to x's dtype, rstd float32 with the reduced dim kept as 1."""
    _no_float64(x, gamma)
    xf = x.to(_acc())
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    return (xf * rstd * gamma.to(_acc())).to(x.dtype), rstd


def npu_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, rotary_mode: str = "half") -> torch.Tensor:
    """x * cos + rotate(x) * sin; half: rotate = cat(-x2, x1); interleave: pairs (x0, x1) -> (-x1, x0)."""
    _no_float64(x, r1, r2)
    if rotary_mode not in ("half", "interleave"):
        raise ValueError(f"rotary_mode {rotary_mode!r} is not one of: half, interleave")
    xf = x.to(_acc())
    return (xf * r1.to(_acc()) + ops.rotate(xf, rotary_mode) * r2.to(_acc())).to(x.dtype)


# ----- torch.npu-like facade -----


class _Event:
    """torch.npu.Event: record(), synchronize(), elapsed_time(end) in milliseconds (host clock here)."""

    def __init__(self, enable_timing: bool = False, **_: Any) -> None:
        self.enable_timing = enable_timing
        self._t: float | None = None

    def record(self, stream: Any = None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        """Host work is done when it returns."""

    def elapsed_time(self, end: _Event) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Events need enable_timing=True for elapsed_time")
        if self._t is None or end._t is None:
            raise RuntimeError("both events must be recorded before elapsed_time")
        return (end._t - self._t) * 1e3


class _Npu:
    """The subset of `torch.npu` the adapter calls."""

    Event = _Event

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def set_device(device: Any) -> None:
        """One simulated device."""

    @staticmethod
    def synchronize(device: Any = None) -> None:
        """CPU work is synchronous."""

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return SOC_NAME

    @staticmethod
    def is_bf16_supported() -> bool:
        return True

    @staticmethod
    def max_memory_allocated(device: Any = None) -> int:
        return 0

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        """No device memory to track."""

    @staticmethod
    def get_soc_version() -> int:
        return 220  # an A2 (910B) code


npu = _Npu()


class utils:  # noqa: N801 - mirrors the torch_npu.utils namespace
    @staticmethod
    def get_cann_version() -> str:
        return "simulated"
