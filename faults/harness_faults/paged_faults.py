"""Planted faults of the paged KV cache form (harness/paged.py): the two ways real paged kernels go wrong.

Both gather the pool like torch-cpu, so the only difference from a correct backend is the planted mistake.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from harness import paged
from harness.backends.torch_cpu import TorchCpu


class PhysicalOrder(TorchCpu):
    """Walks each sequence's blocks in physical order (its table entries sorted by block id) instead of the
    table's logical order: right only when the pool happens to be laid out in order."""

    name: ClassVar[str] = "bug-paged-physical-order"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None, block_table=None):  # type: ignore[override]
        if block_table is not None and kv_lens is not None:
            used = paged.used_entries(block_table, kv_lens, k.shape[1])  # [B, MB]
            big = torch.iinfo(block_table.dtype).max
            ascending = torch.where(used, block_table, big).sort(dim=1).values  # the bug: physical order
            block_table = torch.where(used, ascending, block_table)
        return super().attention(
            q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens, block_table=block_table
        )


class PartialBlockDropped(TorchCpu):
    """Reads only whole blocks: a sequence whose length ends inside a block loses that block's keys."""

    name: ClassVar[str] = "bug-paged-partial-block"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None, block_table=None):  # type: ignore[override]
        if block_table is not None and kv_lens is not None:
            bs = k.shape[1]
            kv_lens = torch.div(kv_lens, bs, rounding_mode="floor") * bs  # the bug: floor, where ceil is meant
        return super().attention(
            q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens, block_table=block_table
        )
