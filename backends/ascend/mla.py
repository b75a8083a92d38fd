"""The Ascend adapter's MLA (a mixin of `Ascend`): absorbed MLA through FIA's MLA branch (query_rope / key_rope)
where its documented constraints hold (docs/ascend.md "MLA"), else the contract's default over attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import ops
from harness.backends.ascend.attention import CAUSAL_SPARSE_MODE
from harness.lazy import F, torch

# FIA's MLA branch with query D 512 (docs/ascend.md "MLA"): latent 512 + rope 64, 32/64/128 query heads, one kv
# head, query S 1..16, PageAttention mandatory with block size 16 or 128, Sq > 1 only as sparse mode 3 (causal).
MLA_LATENT_D, MLA_ROPE_D = 512, 64
MLA_HEADS = (32, 64, 128)
MLA_MAX_SQ = 16
MLA_BLOCK_SIZES = (16, 128)
MLA_PAGE = 128  # the block size the adapter lays a contiguous latent cache out in (the docs recommend 128)


class AscendMlaOps:
    """`mla` of the Ascend adapter: FIA's MLA branch, or the contract's default with the reason recorded."""

    tnpu: Any
    _details: dict[str, Any]
    compressed_causal_mask: Callable[[], torch.Tensor]  # attention.py

    def mla(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        *,
        dv: int,
        scale: float,
        causal: bool = True,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Absorbed MLA through FIA's MLA branch (query_rope / key_rope) where its documented constraints hold;
        elsewhere the generic path (Backend.mla: this adapter's attention, one kv head, the values a view of the
        latent part), the reason recorded in case_details()["mla"]."""
        refusal = mla_refusal(q, kv, dv=dv, causal=causal, block_table=block_table)
        if refusal is not None:
            out = super().mla(q, kv, dv=dv, scale=scale, causal=causal, kv_lens=kv_lens, block_table=block_table)
            self._details["mla"] = {"path": "attention (npu_fusion_attention, D != Dv)", "why": refusal}
            return out
        if block_table is None:
            pool, table, lens = _latent_pages(kv, kv_lens)  # [NB, 128, D], [B, MB], [B]
        else:
            pool, table, lens = kv, block_table, kv_lens
        assert lens is not None  # the contract requires kv_lens with a block_table
        out = self._fused_infer_mla(q, pool, table, lens, dv=dv, scale=float(scale))
        self._details["mla"] = {
            "path": "npu_fused_infer_attention_score MLA (query_rope, key_rope), BNSD",
            "block_size": int(pool.shape[1]),
            "cache": "paged as given" if block_table is not None else "contiguous, laid out in pages by the adapter",
        }
        visible = ops.visible_keys(
            q.shape[2], table.shape[1] * pool.shape[1], batch=q.shape[0], causal=causal, kv_lens=lens, device=q.device
        )
        return out.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)  # rows seeing no key: zeros

    def _fused_infer_mla(
        self, q: torch.Tensor, pool: torch.Tensor, table: torch.Tensor, lens: torch.Tensor, *, dv: int, scale: float
    ) -> torch.Tensor:
        """q [B, H, Sq, D] over a paged latent pool [NB, BS, D]: query / query_rope and the pool's nope / rope
        parts as separate contiguous tensors (FIA takes no strided views, so the split copies), the pool as BNSD's
        (NB, KV_N = 1, BS, d); key = value = the nope part (the op's values: value's D, 512)."""
        _, H, Sq, D = q.shape
        nb, bs, _ = pool.shape
        nope = pool[..., :dv].contiguous().view(nb, 1, bs, dv)
        rope = pool[..., dv:].contiguous().view(nb, 1, bs, D - dv)
        kwargs: dict[str, Any] = {
            "query_rope": q[..., dv:].contiguous(),
            "key_rope": rope,
            "num_heads": H,
            "num_key_value_heads": 1,
            "input_layout": "BNSD",
            "scale": scale,
            "block_table": table.to(torch.int32),
            "block_size": bs,
            "actual_seq_lengths_kv": [int(n) for n in lens.tolist()],
        }
        if Sq > 1:  # the MLA branch takes Sq > 1 only as rightDownCausal with the compressed mask
            kwargs.update(sparse_mode=CAUSAL_SPARSE_MODE, atten_mask=self.compressed_causal_mask())
        out, _ = self.tnpu.npu_fused_infer_attention_score(q[..., :dv].contiguous(), nope, nope, **kwargs)
        return out  # [B, H, Sq, dv]


def mla_refusal(
    q: torch.Tensor, kv: torch.Tensor, *, dv: int, causal: bool, block_table: torch.Tensor | None
) -> str | None:
    """Why FIA's MLA branch cannot take this case (its documented constraints), or None when it can."""
    _, H, Sq, D = q.shape
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"FIA takes float16 / bfloat16 queries only, got {str(q.dtype).removeprefix('torch.')}"
    if (dv, D - dv) != (MLA_LATENT_D, MLA_ROPE_D):
        return f"the MLA branch takes latent {MLA_LATENT_D} + rope {MLA_ROPE_D}, got {dv} + {D - dv}"
    if H not in MLA_HEADS:
        return f"the MLA branch takes {', '.join(map(str, MLA_HEADS))} query heads, got {H}"
    if Sq > MLA_MAX_SQ:
        return f"the MLA branch takes query S 1..{MLA_MAX_SQ}, got {Sq}"
    if Sq > 1 and not causal:
        return "the MLA branch takes Sq > 1 only as sparse mode 3 (causal)"
    if block_table is not None and kv.shape[1] not in MLA_BLOCK_SIZES:
        return f"the MLA branch takes block sizes {', '.join(map(str, MLA_BLOCK_SIZES))}, got {kv.shape[1]}"
    return None


def _latent_pages(kv: torch.Tensor, kv_lens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A contiguous latent cache [B, Skv, D] as FIA's mandatory pages: (pool [B * MB, 128, D], table [B, MB] in
    order, lengths [B]); Skv padded up to a multiple of 128 (the padding is never read: lengths stop before it)."""
    B, skv, D = kv.shape
    pad = -skv % MLA_PAGE
    pool = F.pad(kv, (0, 0, 0, pad)).reshape(-1, MLA_PAGE, D)  # [B * MB, 128, D]
    table = torch.arange(pool.shape[0], dtype=torch.int32, device=kv.device).view(B, -1)
    lens = kv_lens if kv_lens is not None else torch.full((B,), skv, dtype=torch.long, device=kv.device)
    return pool, table, lens
