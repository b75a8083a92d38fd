"""MLA decode: DeepSeek-V3's multi-head latent attention in its absorbed (decode-time) form, op `mla`.

After absorbing W_UK into the query and W_UV into the output projection, every query head attends to one shared
latent cache: keys are the cache rows (kv_lora_rank 512 latent + 64 rope = D 576), values are a view of their
latent part (Dv 512), and the softmax scale stays the unabsorbed model's 1/sqrt(qk_nope 128 + rope 64) =
1/sqrt(192), a shape field, not 1/sqrt(D). Shapes: Sq = 1 decode over ragged lengths (one ending mid-way, one
full), Sq = 2 (multi-token-prediction speculative decode, bottom-right causal), and the same decode over a paged
cache (`paged-*`: kv [num_blocks, block_size, D] in shuffled physical blocks, block_table [B, max_blocks]).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from harness import ops, paged
from harness.lazy import torch
from harness.models.invariance_parts import attention_parts
from harness.models.shapes import ATTENTION_MODELS, AttentionShape
from harness.workload import CaseInputs, InvariancePart, Workload, WorkloadError, generator, random_tensor

DSV3 = ATTENTION_MODELS["deepseek-v3-mla"]  # H 128, D 576 = 512 latent + 64 rope, Dv 512, scale 192**-0.5


@dataclass(frozen=True)
class MlaShape(AttentionShape):
    """An absorbed MLA call: hq query heads over one latent head (hkv 1); `block_size` set: the paged form."""

    block_size: int | None = None

    def describe(self) -> str:
        return super().describe() + (f" bs{self.block_size}" if self.block_size else "")


class MlaDecodeWorkload(Workload):
    """attention.mla_decode. The contiguous decode workload (passed in, so this module does not import
    models/attention.py) counts the FLOPs: MLA's are attention's with hkv 1 and D != Dv."""

    op: ClassVar[str] = "mla"

    def __init__(self, decode: Workload, presets: Mapping[str, Mapping[str, MlaShape]], description: str) -> None:
        super().__init__("attention.mla_decode", presets, description)
        self.decode = decode

    def make_inputs(self, shape: MlaShape, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, torch.Tensor]:
        s = shape
        q = random_tensor((s.b, s.hq, s.sq, s.d), dtype, seed=seed, name="q", distribution=distribution)
        kv = random_tensor((s.b, s.skv, s.d), dtype, seed=seed, name="kv", distribution=distribution)  # [B,Skv,D]
        lens = torch.tensor(s.lens(), dtype=torch.int64)
        if s.block_size is None:
            return {"q": q, "kv": kv, "kv_lens": lens}
        # The same values laid out in shuffled physical blocks, never in ascending order within a sequence.
        mb = s.skv // s.block_size
        spare = s.b  # free blocks in the pool, as a serving pool has
        order = torch.randperm(s.b * mb + spare, generator=generator(seed, "block_order", distribution))
        order = paged.never_ascending(order, s.lens(), mb, s.block_size)
        cache, table = paged.paginate(kv[:, None], s.block_size, order, spare)  # [N, BS, 1, D], [B, MB]
        return {"q": q, "kv": cache[:, :, 0], "kv_lens": lens, "block_table": table}

    def op_kwargs(self, shape: MlaShape) -> dict[str, Any]:
        return {"dv": shape.dv, "scale": shape.scale, "causal": shape.causal}

    def flops(self, shape: MlaShape) -> float:
        # q . kv^T over D and P . kv[..., :Dv] over Dv, visible (query, key) pairs only: 2 B H Sq Skv_eff (D + Dv)
        return self.decode.flops(shape)

    def bytes_moved(self, shape: MlaShape, itemsize: int) -> float:
        # The latent cache read once (values are a view of it: no separate V), q read, out written.
        kv_tokens = sum(shape.lens())
        elems = shape.b * shape.hq * shape.sq * (shape.d + shape.dv) + kv_tokens * shape.d
        table = shape.b * (shape.skv // shape.block_size) * 4 if shape.block_size else 0  # int32 block table
        return float(elems * itemsize + table)

    def reduction_length(self, shape: MlaShape) -> int:
        return max(max(shape.lens(), default=1), shape.d)

    def invariance_parts(self, group: CaseInputs) -> tuple[InvariancePart, ...]:
        return attention_parts(group.shape, group.tensors)

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: MlaShape) -> MlaShape:
        self.check_input_names(tensors)
        q, kv = tensors["q"], tensors["kv"]
        table, kv_lens = tensors.get("block_table"), tensors.get("kv_lens")
        try:
            if q.dim() != 4 or kv.dim() != 3 or q.shape[-1] != kv.shape[-1]:
                raise ops.ContractError(
                    f"input q {list(q.shape)} and kv {list(kv.shape)}: expected [B,H,Sq,D] and [B,Skv,D] (paged:"
                    " [num_blocks,block_size,D]) with the same D"
                )
            if table is None and kv.shape[0] != q.shape[0]:  # else named after k, a view the user never gave
                raise ops.ContractError(
                    f"input kv {list(kv.shape)}: expected [B,Skv,D] with q's B = {q.shape[0]} (q {list(q.shape)})"
                )
            k, v = ops.latent_views(kv, template.dv, paged_form=table is not None)
            if table is not None:
                paged.check_paged_inputs(q, k, v, table, kv_lens)
            else:
                ops.check_attention_inputs(q, k, v, causal=template.causal, window=None, kv_lens=kv_lens)
        except ops.ContractError as exc:
            raise WorkloadError(f"{self.name}: {exc}") from None
        B, H, Sq, D = q.shape
        bs = int(kv.shape[1]) if table is not None else None
        skv = table.shape[1] * kv.shape[1] if table is not None else kv.shape[1]
        lens = tuple(int(x) for x in kv_lens.tolist()) if kv_lens is not None else None
        return replace(template, b=B, hq=H, hkv=1, sq=Sq, skv=skv, d=D, kv_lens=lens, block_size=bs)


def _lens(b: int, skv: int) -> tuple[int, ...]:
    """Ragged lengths: even rows full, odd rows ending mid-way inside a block (odd, never a multiple of 16)."""
    return tuple(skv if i % 2 == 0 else skv // 2 + 1 + (i * 997) % (skv // 2 - 1) // 2 * 2 for i in range(b))


def _shape(h: int, b: int, skv: int, *, sq: int = 1, kv_lens: tuple[int, ...] | None = None, **kw: Any) -> MlaShape:
    return MlaShape(
        b=b, hq=h, hkv=1, sq=sq, skv=skv, d=DSV3.d, dv=DSV3.dv, scale=DSV3.scale, kv_lens=kv_lens or _lens(b, skv), **kw
    )


def mla_decode(decode: Workload) -> Workload:
    """The MLA decode workload; `decode` is attention.decode (its FLOP count)."""
    presets = {
        "tiny": {  # 32 heads (the smallest count FIA's MLA branch takes), D 576: milliseconds on a CPU
            "decode": _shape(32, 2, 64, kv_lens=(64, 23)),
            "mtp": _shape(32, 2, 64, sq=2, kv_lens=(64, 23)),
            "paged-bs16": _shape(32, 3, 128, kv_lens=(128, 23, 70), block_size=16),
            "paged-bs64": _shape(32, 3, 128, kv_lens=(128, 23, 70), block_size=64),  # FIA's MLA: 16 or 128 only
        },
        "small": {
            "decode": _shape(64, 4, 2048, kv_lens=(2048, 1500, 777, 2047)),
            "mtp": _shape(64, 4, 2048, sq=2, kv_lens=(2048, 1500, 777, 2047)),
            "paged-bs64": _shape(64, 4, 2048, kv_lens=(2048, 1500, 777, 2047), block_size=64),
            "paged-bs128": _shape(64, 4, 2048, kv_lens=(2048, 1500, 777, 2047), block_size=128),
        },
        "real": {  # DeepSeek-V3: 128 heads; batch and context points of a decode server
            "mla-b8-s32k": _shape(128, 8, 32768),
            "mla-b32-s8k": _shape(128, 32, 8192),
            "mla-b64-s4k": _shape(128, 64, 4096),
            "mla-b64-s32k": _shape(128, 64, 32768),
            "mla-mtp-b32-s8k": _shape(128, 32, 8192, sq=2),
            "mla-paged-bs64-b32-s8k": _shape(128, 32, 8192, block_size=64),
            "mla-paged-bs128-b64-s32k": _shape(128, 64, 32768, block_size=128),
        },
    }
    return MlaDecodeWorkload(
        decode,
        presets,
        "DeepSeek-V3 absorbed MLA decode: H query heads over one latent cache (D 576 = 512 + 64 rope, values its"
        " first 512 columns, scale 1/sqrt(192)), ragged; `mtp`: Sq = 2 (speculative, bottom-right causal);"
        " `paged-*`: the cache in shuffled blocks (block_table)",
    )
