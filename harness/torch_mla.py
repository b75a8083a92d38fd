"""Absorbed MLA (contract op `mla`) on plain torch ops: two batched GEMMs with the heads folded into the rows.

With one latent head shared by every query head, the H x Sq query rows of a sequence all meet the same keys, so
scores are one [Sq*H, D] x [D, Skv] GEMM per sequence (no kv head repeated H times, as SDPA's GQA path does on a
CPU: measured 10-20x slower on the small preset), then a masked float32 softmax, then P x kv[..., :Dv] reading the
same cache as values. Scores and softmax stay float32 whatever the input dtype (as fused attention kernels keep
them); P is rounded to the input dtype for the second GEMM, as flash kernels do. No host sync: CUDA-graph safe.
"""

from __future__ import annotations

from harness import ops, paged
from harness.lazy import torch


def float32_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [B, M, K] x b [B, K, N] -> float32 [B, M, N]: half-precision inputs accumulate and land in float32 on the
    tensor cores where torch has bmm's out_dtype (CUDA); elsewhere the inputs are widened first."""
    if a.dtype in (torch.float16, torch.bfloat16) and a.is_cuda:
        try:
            return torch.bmm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # a torch without bmm(out_dtype=): widen instead
            pass
    return torch.bmm(a.float(), b.float())


def absorbed_mla(
    q: torch.Tensor,
    kv: torch.Tensor,
    *,
    dv: int,
    scale: float,
    causal: bool = True,
    kv_lens: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, Sq, D] x latent kv [B, Skv, D] (paged: [num_blocks, block_size, D] + block_table) ->
    [B, H, Sq, Dv] in q's dtype; the semantics of harness.ops.mla."""
    if block_table is not None:  # paged: the sequences' blocks gathered in logical order first
        if kv_lens is None:
            raise ops.ContractError("mla input kv_lens: required with block_table")
        kv = paged.gather(kv[:, :, None], block_table, kv_lens)[:, 0]  # [B, MB*BS, D]
    B, H, Sq, D = q.shape
    Skv = kv.shape[1]
    rows = q.transpose(1, 2).reshape(B, Sq * H, D)  # [B, Sq*H, D]: row i*H + h is query i of head h
    scores = float32_bmm(rows, kv.transpose(1, 2)) * scale  # [B, Sq*H, Skv] float32
    vis = ops.visible_keys(Sq, Skv, batch=B, causal=causal, kv_lens=kv_lens, device=q.device)  # [B, Sq, Skv]
    vis = vis[:, :, None].expand(B, Sq, H, Skv).reshape(B, Sq * H, Skv)  # [B, Sq*H, Skv]
    p = torch.softmax(scores.masked_fill(~vis, float("-inf")), dim=-1)
    p = p.masked_fill(~vis.any(dim=-1, keepdim=True), 0.0)  # a row that sees no key: zeros, not NaN
    out = torch.bmm(p.to(q.dtype), kv[..., :dv])  # [B, Sq*H, Dv]: values are the latent part of the same cache
    return out.reshape(B, Sq, H, dv).transpose(1, 2)  # [B, H, Sq, Dv]
