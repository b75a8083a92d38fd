"""The MLA branch of the simulated npu_fused_infer_attention_score (FIA with `query_rope` / `key_rope`).

Kept apart from sim.py (which must not grow); sim.py hands every call that carries a rope tensor here. The rules
below are the ones torch_npu's API page states for MLA with query D = 512 (op-plugin
docs/context/torch_npu-npu_fused_infer_attention_score.md, "query_rope和key_rope输入时即为MLA场景"; see
docs/ascend.md): a call outside them raises as the real op refuses it, and what the page does not settle raises
NotImplementedError instead of being guessed. The computation: scores = q_nope . k_nope + q_rope . k_rope,
times `scale`, masked by the per-sequence lengths (and rightDownCausal for Sq > 1), softmax, times value; in the
accumulation dtype sim.py hands over (float32 as on the NPU, float64 for `harness judge`), rounded once to the
query's dtype.
"""

from __future__ import annotations

import math
from typing import Any

from harness import paged
from harness.lazy import torch

ROPE_ARGS = ("query_rope", "key_rope")
MLA_QUERY_D = 512  # the latent (kv_lora_rank) width the page documents for this branch; 128 is TND-only
TND_ONLY_QUERY_D = 128
ROPE_D = 64
MLA_HEADS = (32, 64, 128)  # num_heads the page allows with query D 512
MAX_QUERY_S = 16  # query S 1..16
MLA_BLOCK_SIZES = (16, 128)  # PageAttention is mandatory; block_size 16 or 128 (ND format)
COMPRESSED_MASK = 2048
CAUSAL_SPARSE_MODE = 3
LAYOUTS = ("BSH", "BSND", "BNSD", "BNSD_NBSD", "BSND_NBSD", "BSH_NBSD", "TND", "TND_NTD")
MODELLED_LAYOUTS = ("BSH", "BSND", "BNSD")
# Features the page says the D = 512 MLA branch does not support (pse, left padding, prefix, quantization).
REFUSED = (
    "pse_shift",
    "query_padding_size",
    "kv_padding_size",
    "key_shared_prefix",
    "value_shared_prefix",
    "actual_shared_prefix_len",
    "dequant_scale1",
    "quant_scale1",
    "dequant_scale2",
    "quant_scale2",
    "quant_offset2",
    "antiquant_scale",
    "antiquant_offset",
    "key_antiquant_scale",
    "key_antiquant_offset",
    "value_antiquant_scale",
    "value_antiquant_offset",
    "key_rope_antiquant_scale",
)
ZERO_MODES = ("antiquant_mode", "key_antiquant_mode", "value_antiquant_mode")  # 0 is the default: accepted


class MlaArgumentError(ValueError):
    """An argument combination FIA's MLA branch documents as unsupported (the real op raises a RuntimeError)."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise MlaArgumentError(f"npu_fused_infer_attention_score (MLA: query_rope/key_rope): {message}")


def _check_extras(call: dict[str, Any]) -> dict[str, Any]:
    """The rope tensors out of the unmodelled keywords; every documented-unsupported feature refused."""
    extra = dict(call["unmodelled"])
    rope = {name: extra.pop(name, None) for name in ROPE_ARGS}
    _require(all(t is not None for t in rope.values()), "query_rope and key_rope must be given together, not one alone")
    refused = sorted(n for n in REFUSED if (call.get(n) if n in call else extra.get(n)) is not None)
    _require(not refused, f"not supported with query D 512: {refused}")
    modes = sorted(n for n in ZERO_MODES if extra.pop(n, 0) != 0)
    _require(not modes, f"quantization modes are not supported: {modes}")
    for name in REFUSED:
        extra.pop(name, None)
    unknown = sorted(k for k, v in extra.items() if v is not None)
    if unknown:
        raise NotImplementedError(f"npu_fused_infer_attention_score arguments not modelled: {unknown}")
    _require(not call["softmax_lse_flag"], "softmax_lse_flag=True (SoftMaxLse) is not supported")
    return rope


def _check_dtypes(tensors: dict[str, torch.Tensor], acc: torch.dtype) -> None:
    """fp16 / bf16 only (the float64 oracle lifts it); each rope tensor in its partner's dtype; all contiguous."""
    q, k = tensors["query"], tensors["key"]
    if acc != torch.float64:
        _require(q.dtype in (torch.float16, torch.bfloat16), f"query dtype must be float16 or bfloat16, got {q.dtype}")
        _require(k.dtype in (torch.float16, torch.bfloat16), f"key dtype must be float16 or bfloat16, got {k.dtype}")
    _require(tensors["query_rope"].dtype == q.dtype, "query_rope must have the query's dtype")
    _require(tensors["key_rope"].dtype == k.dtype, "key_rope must have the key's dtype")
    _require(tuple(tensors["value"].shape) == tuple(k.shape), "key and value must have the same shape")
    loose = [name for name, t in tensors.items() if not t.is_contiguous()]
    _require(not loose, f"non-contiguous tensors are not supported: {loose}")


def _query_bnsd(query: torch.Tensor, layout: str, heads: int, d: int) -> torch.Tensor:
    """[B, N, S, d] view of a query-side tensor in BSH / BSND / BNSD."""
    if layout == "BNSD":
        return query
    if layout == "BSND":
        return query.transpose(1, 2)
    B, S, _ = query.shape
    return query.view(B, S, heads, d).transpose(1, 2)


def _cache_blocks(cache: torch.Tensor, layout: str, block_size: int, d: int) -> torch.Tensor:
    """A paged cache as [num_blocks, block_size, KV_N, d]: (num_blocks, KV_N, block_size, d) is accepted for a
    BNSD query, (num_blocks, block_size, KV_N * d) for any query layout."""
    if cache.dim() == 4 and layout == "BNSD":
        _require(
            cache.shape[2] == block_size and cache.shape[3] == d,
            f"paged cache: expected (num_blocks, KV_N, {block_size}, {d}), got {list(cache.shape)}",
        )
        return cache.transpose(1, 2)
    _require(
        cache.dim() == 3 and cache.shape[1] == block_size and cache.shape[2] % d == 0,
        f"paged cache: expected (num_blocks, {block_size}, KV_N*{d}) or, for BNSD, (num_blocks, KV_N, "
        f"{block_size}, {d}); got {list(cache.shape)}",
    )
    return cache.view(cache.shape[0], block_size, cache.shape[2] // d, d)


def _lengths(values: Any, batch: int, name: str) -> list[int] | None:
    """actual_seq_lengths(_kv): one value for every batch, or at least B values (the first B are used)."""
    if values is None:
        return None
    vals = [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    _require(len(vals) == 1 or len(vals) >= batch, f"{name}: give 1 or at least B={batch} values, got {len(vals)}")
    return vals * batch if len(vals) == 1 else vals[:batch]


def _check_sparse(call: dict[str, Any], sq: int) -> None:
    """Sq = 1: sparse_mode 0 and no mask; Sq > 1: sparse_mode 3 with the compressed 2048 x 2048 mask."""
    mask, mode = call["atten_mask"], call["sparse_mode"]
    if sq == 1:
        _require(mode == 0 and mask is None, f"Q_S = 1 takes sparse_mode 0 without atten_mask, got sparse_mode {mode}")
        return
    _require(mode == CAUSAL_SPARSE_MODE and mask is not None, f"Q_S > 1 takes sparse_mode 3 and atten_mask, got {mode}")
    _require(
        tuple(mask.shape[-2:]) == (COMPRESSED_MASK, COMPRESSED_MASK),
        f"sparse_mode 3 takes the compressed {COMPRESSED_MASK}x{COMPRESSED_MASK} mask, got {list(mask.shape)}",
    )


def fused_infer_mla(call: dict[str, Any], acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """FIA's MLA branch: `call` holds every argument of sim.npu_fused_infer_attention_score (the rope tensors
    among its `unmodelled` keywords); `acc` is the accumulation dtype. Returns (out, zeros(1))."""
    rope = _check_extras(call)
    query, key, value = call["query"], call["key"], call["value"]
    tensors = {"query": query, "key": key, "value": value, **rope}
    _check_dtypes(tensors, acc)
    layout = call["input_layout"]
    _require(layout in LAYOUTS, f"input_layout {layout!r} is not one of {list(LAYOUTS)}")
    if layout not in MODELLED_LAYOUTS:
        raise NotImplementedError(f"MLA input_layout {layout!r} is not modelled by the simulator")
    heads = call["num_heads"]
    _require(heads in MLA_HEADS, f"num_heads must be one of {list(MLA_HEADS)} with query D 512, got {heads}")
    d = query.shape[-1] if layout != "BSH" else query.shape[-1] // heads
    _require(d != TND_ONLY_QUERY_D, "query D 128 is supported in the TND / NTD_TND layouts only")
    _require(d == MLA_QUERY_D, f"query D must be {MLA_QUERY_D} (or 128 in TND), got {d}")
    q = _query_bnsd(query, layout, heads, d)  # [B, N, Sq, 512]
    q_rope = _query_bnsd(rope["query_rope"], layout, heads, ROPE_D)
    B, N, Sq, _ = q.shape
    _require(heads == N, f"query has {N} heads, num_heads is {heads}")
    want_rope = (*query.shape[:-1], query.shape[-1] // d * ROPE_D)
    _require(tuple(rope["query_rope"].shape) == want_rope, f"query_rope: expected {list(want_rope)}")
    _require(1 <= Sq <= MAX_QUERY_S, f"query S must lie in [1, {MAX_QUERY_S}], got {Sq}")
    _check_sparse(call, Sq)
    table, block_size = call["block_table"], call["block_size"]
    _require(table is not None, "query D 512 requires PageAttention (block_table and block_size)")
    _require(block_size in MLA_BLOCK_SIZES, f"block_size must be one of {list(MLA_BLOCK_SIZES)}, got {block_size}")
    _require(table.dtype == torch.int32 and table.dim() == 2, "block_table must be int32 [B, max_blocks]")
    _require(table.shape[0] == B, f"block_table has {table.shape[0]} rows for B={B}")
    lens_kv = _lengths(call["actual_seq_lengths_kv"], B, "actual_seq_lengths_kv")
    _require(lens_kv is not None, "PageAttention requires actual_seq_lengths_kv")
    assert lens_kv is not None
    _require(
        all(0 <= n <= table.shape[1] * block_size for n in lens_kv), "actual_seq_lengths_kv exceeds the block_table"
    )
    lens_q = _lengths(call["actual_seq_lengths"], B, "actual_seq_lengths") or [Sq] * B
    _require(all(0 <= n <= Sq for n in lens_q), "actual_seq_lengths exceeds the query's S")
    k_blocks = _cache_blocks(key, layout, block_size, MLA_QUERY_D)  # [NB, BS, KV_N, 512]
    r_blocks = _cache_blocks(rope["key_rope"], layout, block_size, ROPE_D)
    kv_heads = call["num_key_value_heads"] or heads
    _require(kv_heads == 1 and k_blocks.shape[2] == 1, "key's N (num_key_value_heads) must be 1")
    _require(r_blocks.shape[:3] == k_blocks.shape[:3], "key_rope must match key except its last dim (64)")
    lens = torch.tensor(lens_kv, dtype=torch.long)
    k_nope = paged.gather(k_blocks, table, lens)[:, 0]  # [B, MB*BS, 512], logical order
    k_rope = paged.gather(r_blocks, table, lens)[:, 0]  # [B, MB*BS, 64]
    v = paged.gather(_cache_blocks(value, layout, block_size, MLA_QUERY_D), table, lens)[:, 0]
    out = torch.zeros(B, N, Sq, v.shape[-1], dtype=acc)
    for b in range(B):  # each sequence its own lengths and causal alignment
        lq, lk = lens_q[b], lens_kv[b]
        if lq and lk:
            pair = (q[b, :, :lq], q_rope[b, :, :lq], k_nope[b, :lk], k_rope[b, :lk])
            out[b, :, :lq] = _attend(*pair, v[b, :lk], call["scale"], acc)
    return _from_bnsd(out.to(query.dtype), layout), torch.zeros(1)


def _attend(
    q: torch.Tensor,
    q_rope: torch.Tensor,
    k: torch.Tensor,
    k_rope: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    acc: torch.dtype,
) -> torch.Tensor:
    """One sequence: q [N, Sq, 512], q_rope [N, Sq, 64], k [Skv, 512], k_rope [Skv, 64], v [Skv, Dv] ->
    [N, Sq, Dv]; bottom-right causal over its own lengths (a row that sees no key is zeros, UNCONFIRMED)."""
    s = (q.to(acc) @ k.to(acc).T + q_rope.to(acc) @ k_rope.to(acc).T) * scale  # [N, Sq, Skv]
    sq, skv = s.shape[-2:]
    masked = torch.ones(sq, skv, dtype=torch.bool).triu(diagonal=skv - sq + 1)  # rightDownCausal (none at Sq=1)
    s = s.masked_fill(masked, -math.inf)
    row_max = s.amax(dim=-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)))
    total = p.sum(dim=-1, keepdim=True)
    return (p @ v.to(acc)) / torch.where(total > 0, total, torch.ones_like(total))


def _from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The output in the query's layout (no NBSD / NTD output modelled): [B, N, S, Dv] -> BNSD / BSND / BSH."""
    if layout == "BNSD":
        return t.contiguous()
    if layout == "BSND":
        return t.transpose(1, 2).contiguous()
    B, N, S, D = t.shape
    return t.transpose(1, 2).reshape(B, S, N * D)
