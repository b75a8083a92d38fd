"""Paged attention: the block-table input form (vLLM / SGLang / FIA serving caches), for decode and chunked prefill.

`attention.paged_decode` is the same ragged decode as `attention.decode`, and `attention.paged_prefill` the same
chunked prefill as `attention.chunked_prefill` (Sq > 1 new queries, the last Sq positions of each sequence's
cache, bottom-right causal, ragged kv_lens: how vLLM and SGLang serve a prompt chunk), but k and v arrive as a pool
of physical blocks [num_blocks, block_size, Hkv, D] in shuffled order, with a block_table [B, max_blocks] listing
each sequence's blocks in logical order (harness/paged.py has the contract). Lengths end inside a block, so the
last partial block matters, and the physical order differs from the logical one, so a kernel walking the pool
instead of the table fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from harness import ops, paged
from harness.lazy import torch
from harness.models.shapes import ATTENTION_MODELS, AttentionDims, AttentionShape
from harness.workload import Workload, WorkloadError, generator

PAGED_KINDS = ("decode", "prefill")


@dataclass(frozen=True)
class PagedShape(AttentionShape):
    """An attention shape with its cache in blocks of `block_size` tokens; Skv is max_blocks * block_size."""

    block_size: int = 16

    def describe(self) -> str:
        return super().describe() + f" bs{self.block_size}"


class PagedWorkload(Workload):
    """attention.paged_<kind>: the contiguous workload of that kind (passed in, so this module does not import
    models/attention.py) over a paged, ragged KV cache; the contiguous one makes the values and counts the work.
    Kinds: `decode` (Sq = 1) and `prefill` (a chunk of Sq > 1 queries: chunked prefill from the block table)."""

    op: ClassVar[str] = "attention"

    def __init__(
        self, kind: str, contiguous: Workload, presets: Mapping[str, Mapping[str, PagedShape]], description: str
    ) -> None:
        if kind not in PAGED_KINDS:
            raise WorkloadError(f"paged attention kind {kind!r} is not one of: {', '.join(PAGED_KINDS)}")
        super().__init__(f"attention.paged_{kind}", presets, description)
        self.kind = kind
        self.contiguous = contiguous

    def op_kwargs(self, shape: PagedShape) -> dict[str, Any]:
        return self.contiguous.op_kwargs(shape)

    def flops(self, shape: PagedShape) -> float:
        return self.contiguous.flops(shape)

    def reduction_length(self, shape: PagedShape) -> int:
        return self.contiguous.reduction_length(shape)

    def make_inputs(
        self, shape: PagedShape, dtype: torch.dtype, seed: int, distribution: str
    ) -> dict[str, torch.Tensor]:
        s = shape
        # The same values as the contiguous workload's k and v, then laid out in shuffled physical blocks.
        contiguous = self.contiguous.make_inputs(s, dtype, seed, distribution)
        mb = s.skv // s.block_size
        spare = s.b  # free blocks in the pool, as a serving pool has
        order = torch.randperm(s.b * mb + spare, generator=generator(seed, "block_order", distribution))
        order = paged.never_ascending(order, s.lens(), mb, s.block_size)
        k, table = paged.paginate(contiguous["k"], s.block_size, order, spare)
        v, _ = paged.paginate(contiguous["v"], s.block_size, order, spare)
        return {"q": contiguous["q"], "k": k, "v": v, "kv_lens": contiguous["kv_lens"], "block_table": table}

    def bytes_moved(self, shape: PagedShape, itemsize: int) -> float:
        table = shape.b * (shape.skv // shape.block_size) * 4  # int32 block table
        return self.contiguous.bytes_moved(shape, itemsize) + table

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: PagedShape) -> PagedShape:
        self.check_input_names(tensors)
        q, k, v = tensors["q"], tensors["k"], tensors["v"]
        table, kv_lens = tensors.get("block_table"), tensors.get("kv_lens")
        if table is None:
            raise WorkloadError(f"{self.name}: input block_table: required (the paged form), shape [B, max_blocks]")
        try:
            paged.check_paged_inputs(q, k, v, table, kv_lens)
        except ops.ContractError as exc:
            raise WorkloadError(f"{self.name}: {exc}") from None
        assert kv_lens is not None
        B, Hq, Sq, D = q.shape
        if self.kind == "decode" and Sq != 1:
            raise WorkloadError(
                f"{self.name}: input q: expected shape [{B}, {Hq}, 1, {D}] (decode: Sq = 1), got {list(q.shape)}"
            )
        if self.kind == "prefill" and Sq < 2:
            raise WorkloadError(
                f"{self.name}: input q: expected shape [{B}, {Hq}, Sq, {D}] with Sq > 1 (a prefill chunk), "
                f"got {list(q.shape)}"
            )
        bs, hkv, dv = k.shape[1], k.shape[2], v.shape[3]
        lens = tuple(int(x) for x in kv_lens.tolist())
        skv = table.shape[1] * bs
        return replace(template, b=B, hq=Hq, hkv=hkv, sq=Sq, skv=skv, d=D, dv=dv, kv_lens=lens, block_size=bs)


def _shapes(dims: Mapping[str, AttentionDims], block_sizes: tuple[int, ...], **kw: Any) -> dict[str, PagedShape]:
    """One shape per geometry and block size; the first block size keeps the geometry's bare name."""
    return {
        name if bs == block_sizes[0] else f"{name}_bs{bs}": PagedShape(
            hq=d.hq, hkv=d.hkv, d=d.d, dv=d.dv, scale=d.scale, block_size=bs, **kw
        )
        for name, d in dims.items()
        for bs in block_sizes
    }


def paged_decode(decode: Workload, tiny: Mapping[str, AttentionDims], small: Mapping[str, AttentionDims]) -> Workload:
    """The paged decode workload over the contiguous `decode` workload; lengths end inside blocks (and one on a
    block boundary)."""
    real_lens = (32768, 30000, 32768, 28001, 32768, 31000, 32768, 32767)
    presets = {
        "tiny": _shapes(tiny, (16, 64), b=3, sq=1, skv=128, kv_lens=(128, 23, 70)),
        "small": _shapes(small, (64, 128), b=4, sq=1, skv=2048, kv_lens=(2048, 1500, 777, 2047)),
        "real": _shapes(ATTENTION_MODELS, (128,), b=8, sq=1, skv=32768, kv_lens=real_lens),
    }
    return PagedWorkload("decode", decode, presets, "one new token per sequence over a paged KV cache (block_table)")


def paged_prefill(chunked: Workload, tiny: Mapping[str, AttentionDims], small: Mapping[str, AttentionDims]) -> Workload:
    """The paged chunked-prefill workload over the contiguous `chunked` (attention.chunked_prefill) workload: the
    chunk is each sequence's last Sq cached positions; lengths end inside blocks (and one on a block boundary),
    every length >= Sq (a chunk sits inside its own sequence)."""
    presets = {
        "tiny": _shapes(tiny, (16, 64), b=3, sq=16, skv=128, kv_lens=(128, 40, 70)),
        "small": _shapes(small, (64, 128), b=4, sq=128, skv=2048, kv_lens=(2048, 1500, 777, 2047)),
        "real": _shapes(ATTENTION_MODELS, (128,), b=2, sq=2048, skv=8192, kv_lens=(8192, 5000)),
    }
    return PagedWorkload(
        "prefill",
        chunked,
        presets,
        "a chunk of Sq > 1 new queries over a paged KV cache (block_table): chunked prefill, the chunk the last Sq "
        "positions of each sequence, bottom-right causal, ragged",
    )
