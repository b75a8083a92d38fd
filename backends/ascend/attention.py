"""The Ascend adapter's attention (a mixin of `Ascend`, as quant.py is, so adapter.py stays one job): the contract's
attention on npu_fused_infer_attention_score (FIA: fp16 / bf16, contiguous or paged) and npu_fusion_attention
(fp32, D != Dv), with Ascend's sparse modes, its inverted mask convention and explicit scales.
"""

from __future__ import annotations

import math
from typing import Any

from harness import ops, paged
from harness.backend import UnsupportedCaseError
from harness.lazy import torch

MAX_TOKENS = 2147483647
CAUSAL_SPARSE_MODE = 3  # rightDownCausal: the contract's bottom-right alignment
WINDOW_SPARSE_MODE = 4  # band with origin bottom-right


def _fia_pages(sq: int, block_size: int) -> bool:
    """Whether FIA's own block_table path takes a paged case (ascend-api.md): decode (Sq = 1) with a block size up
    to 512; the prompt path (Sq > 1, chunked prefill) only with multiples of 128."""
    return 0 < block_size <= 512 and (sq == 1 or block_size % 128 == 0)


class AscendAttentionOps:
    """`attention` of the Ascend adapter, and the compressed causal mask its sparse modes (and MLA's) take."""

    tnpu: Any
    device: str
    _compressed_mask: torch.Tensor | None

    def compressed_causal_mask(self) -> torch.Tensor:
        """The 2048 x 2048 upper-triangular mask sparse modes 2/3/4 take (True = masked)."""
        if self._compressed_mask is None:
            mask = torch.ones(2048, 2048, dtype=torch.bool).triu(diagonal=1)
            self._compressed_mask = mask.to(self.device)
        return self._compressed_mask

    def attention(
        self,
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
        B, _, Sq, D = q.shape
        Dv = v.shape[3]
        # Ascend's ops default to scale 1.0, not 1/sqrt(D): always pass the contract's scale explicitly.
        scale_value = 1.0 / math.sqrt(D) if scale is None else float(scale)
        if block_table is not None:
            if kv_lens is None:
                raise UnsupportedCaseError("a paged cache (block_table) needs kv_lens (FIA's actual_seq_lengths_kv)")
            if q.dtype != torch.float32 and Dv == D and window is None and _fia_pages(Sq, k.shape[1]):
                out = self._fused_infer_paged(q, k, v, block_table, kv_lens, scale=scale_value, causal=causal)
                skv = block_table.shape[1] * k.shape[1]  # the gathered cache's length
                visible = ops.visible_keys(Sq, skv, batch=B, causal=causal, kv_lens=kv_lens, device=q.device)
                return out.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)
            # FIA's block_table path is wired for fp16 / bf16 with D == Dv, and its prompt path (Sq > 1) only for
            # block sizes that are multiples of 128 (ascend-api.md); npu_fusion_attention (fp32, D != Dv) takes no
            # block table: gather the pages in logical order, then the contiguous path.
            k, v = paged.to_contiguous(k, v, block_table, kv_lens)  # [B, Hkv, MB*BS, D]
        Skv = k.shape[2]
        if q.dtype == torch.float32 or Dv != D:
            out = self._fusion_attention(q, k, v, causal=causal, window=window, scale=scale_value, kv_lens=kv_lens)
        else:
            out = self._fused_infer(q, k, v, causal=causal, window=window, scale=scale_value, kv_lens=kv_lens)
        visible = ops.visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens, device=q.device)
        # Fully masked rows: the NPU's value is unconfirmed; the contract says zeros.
        return out.masked_fill(~visible.any(dim=-1)[:, None, :, None], 0.0)

    def _fused_infer(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        window: int | None,
        scale: float,
        kv_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        """npu_fused_infer_attention_score (fp16 / bf16), BNSD; bottom-right causal as sparse mode 3, a sliding
        window as sparse mode 4 with pre_tokens = w - 1 (w keys, the diagonal included), next_tokens = 0."""
        B, Hq, Sq, _ = q.shape
        Hkv = k.shape[1]
        kwargs: dict[str, Any] = {
            "num_heads": Hq,
            "num_key_value_heads": Hkv,
            "input_layout": "BNSD",
            "scale": scale,
        }
        if kv_lens is not None:
            kwargs["actual_seq_lengths_kv"] = [int(n) for n in kv_lens.tolist()]
            kwargs["actual_seq_lengths"] = [Sq] * B
        if causal and window is None:
            kwargs.update(sparse_mode=CAUSAL_SPARSE_MODE, atten_mask=self.compressed_causal_mask())
        elif causal:
            mask = self.compressed_causal_mask()
            kwargs.update(sparse_mode=WINDOW_SPARSE_MODE, atten_mask=mask, pre_tokens=window - 1, next_tokens=0)
        out, _ = self.tnpu.npu_fused_infer_attention_score(q, k, v, **kwargs)
        return out

    def _fused_infer_paged(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        block_table: torch.Tensor,
        kv_lens: torch.Tensor,
        *,
        scale: float,
        causal: bool,
    ) -> torch.Tensor:
        """FIA over a paged cache, BSH: the contract's [num_blocks, block_size, Hkv, D] cache is FIA's
        (num_blocks, block_size, H_kv) as a view (no copy); q [B, Hq, Sq, D] -> [B, Sq, Hq * D]. Decode (Sq = 1)
        sees every valid key, so no mask is passed; a causal prefill chunk (Sq > 1, the last Sq positions of the
        cache) is sparse mode 3 (bottom-right) with the compressed mask and actual_seq_lengths = Sq."""
        B, Hq, Sq, D = q.shape
        nb, bs, hkv, _ = k.shape
        masking: dict[str, Any] = {}
        if Sq > 1 and causal:
            masking = {"sparse_mode": CAUSAL_SPARSE_MODE, "atten_mask": self.compressed_causal_mask()}
        if Sq > 1:
            masking["actual_seq_lengths"] = [Sq] * B
        out, _ = self.tnpu.npu_fused_infer_attention_score(
            q.transpose(1, 2).reshape(B, Sq, Hq * D),
            k.reshape(nb, bs, hkv * D),
            v.reshape(nb, bs, hkv * v.shape[3]),
            actual_seq_lengths_kv=[int(n) for n in kv_lens.tolist()],
            block_table=block_table.to(torch.int32),
            block_size=bs,
            num_heads=Hq,
            num_key_value_heads=hkv,
            input_layout="BSH",
            scale=scale,
            **masking,
        )  # [B, Sq, Hq * Dv]
        return out.view(B, Sq, Hq, -1).transpose(1, 2)  # [B, Hq, Sq, Dv]

    def _fusion_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        window: int | None,
        scale: float,
        kv_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        """npu_fusion_attention (fp32, and D != Dv), BNSD, with an explicit B1SS mask in Ascend's convention."""
        B, Hq, Sq, _ = q.shape
        Skv = k.shape[2]
        visible = ops.visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens, device=q.device)
        mask = ~visible[:, None]  # [B, 1, Sq, Skv]; Ascend masks say True = masked OUT, the inverse of the contract
        out = self.tnpu.npu_fusion_attention(
            q,
            k,
            v,
            Hq,
            "BNSD",
            atten_mask=mask,
            scale=scale,
            pre_tockens=MAX_TOKENS,
            next_tockens=MAX_TOKENS,
            sparse_mode=0,
        )[0]
        return out
