"""The paged KV cache input form of attention: a block table over a block-laid cache (vLLM, SGLang, FIA).

Contract: k [num_blocks, block_size, Hkv, D] and v [num_blocks, block_size, Hkv, Dv] hold the cache in physical
blocks; block_table [B, max_blocks] (integer) lists sequence b's blocks in logical order, so its key t lives at
block block_table[b, t // block_size], slot t % block_size. kv_lens is required: sequence b reads its first
ceil(kv_lens[b] / block_size) table entries and no other; the rest of its row may hold anything (-1, stale or
out-of-range ids) and is never read. Gathered, the cache is the contiguous [B, Hkv, max_blocks * block_size, D]
form, and paged attention is contiguous attention on it (bitwise, in the reference).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from harness.lazy import torch
from harness.op_types import ContractError, require


def check_paged_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor, kv_lens: torch.Tensor | None
) -> None:
    """Validate the paged form; messages name the tensor, what was expected and what was given."""
    require(q.dim() == 4, f"attention input q: expected 4 dims [B,Hq,Sq,D], got shape {list(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        require(
            t.dim() == 4,
            f"attention input {name} (paged): expected 4 dims [num_blocks,block_size,Hkv,D], got shape {list(t.shape)}",
        )
    require(
        v.shape[:3] == k.shape[:3],
        f"attention input v (paged): expected shape [{', '.join(map(str, k.shape[:3]))}, Dv], got {list(v.shape)}",
    )
    B = q.shape[0]
    require(
        block_table.dim() == 2 and block_table.shape[0] == B,
        f"attention input block_table: expected shape [{B}, max_blocks], got {list(block_table.shape)}",
    )
    require(
        not block_table.is_floating_point() and not block_table.is_complex() and block_table.dtype != torch.bool,
        f"attention input block_table: expected an integer dtype, got {block_table.dtype}",
    )
    require(kv_lens is not None, "attention input kv_lens: required with block_table (a paged cache has no length)")
    assert kv_lens is not None
    require(
        kv_lens.dim() == 1 and kv_lens.shape[0] == B,
        f"attention input kv_lens: expected shape [{B}], got {list(kv_lens.shape)}",
    )
    capacity = block_table.shape[1] * k.shape[1]
    if kv_lens.numel():
        lo, hi = int(kv_lens.min()), int(kv_lens.max())
        require(
            lo >= 0 and hi <= capacity,
            f"attention input kv_lens: values must lie in [0, {capacity}] (max_blocks x block_size), got [{lo}, {hi}]",
        )
    used = used_entries(block_table, kv_lens, k.shape[1])
    if bool(used.any()):
        ids = block_table[used]
        lo, hi = int(ids.min()), int(ids.max())
        require(
            lo >= 0 and hi < k.shape[0],
            f"attention input block_table: the entries kv_lens uses must lie in [0, {k.shape[0] - 1}],"
            f" got [{lo}, {hi}]",
        )


def used_entries(block_table: torch.Tensor, kv_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """bool [B, max_blocks]: the table entries sequence b reads (the first ceil(kv_lens[b] / block_size))."""
    blocks = (kv_lens.to(device=block_table.device, dtype=torch.long) + block_size - 1) // block_size  # [B]
    return torch.arange(block_table.shape[1], device=block_table.device)[None, :] < blocks[:, None]


def gather(cache: torch.Tensor, block_table: torch.Tensor, kv_lens: torch.Tensor) -> torch.Tensor:
    """[num_blocks, block_size, Hkv, D] -> contiguous [B, Hkv, max_blocks * block_size, D], in logical order.

    Unused entries are never dereferenced (they read block 0, then are zeroed), whatever ids they hold."""
    _, bs, hkv, d = cache.shape
    B, mb = block_table.shape
    used = used_entries(block_table, kv_lens, bs)  # [B, MB]
    ids = torch.where(used, block_table.to(torch.long), torch.zeros((), dtype=torch.long, device=cache.device))
    blocks = cache[ids.reshape(-1)].reshape(B, mb, bs, hkv, d)  # [B, MB, BS, Hkv, D]
    blocks = torch.where(used[:, :, None, None, None], blocks, torch.zeros((), dtype=cache.dtype, device=cache.device))
    return blocks.reshape(B, mb * bs, hkv, d).transpose(1, 2)  # [B, Hkv, MB*BS, D]


def to_contiguous(
    k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor, kv_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paged k, v gathered into the contiguous form the rest of the contract takes."""
    return gather(k, block_table, kv_lens), gather(v, block_table, kv_lens)


def paginate(
    k: torch.Tensor, block_size: int, order: torch.Tensor, spare: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A contiguous [B, Hkv, Skv, D] cache laid out in blocks: (cache [B*MB + spare, BS, Hkv, D], table [B, MB]).

    `order` (a permutation of B*MB + spare ids) places logical block i of the flattened batch at physical block
    order[i]; the spare blocks (order[B*MB:]) hold copies of block 0's data, padding the pool as a serving pool has
    free blocks. Skv must be a multiple of block_size."""
    B, hkv, skv, d = k.shape
    require(skv % block_size == 0, f"paginate: Skv={skv} must be a multiple of block_size={block_size}")
    mb = skv // block_size
    logical = k.transpose(1, 2).reshape(B * mb, block_size, hkv, d)  # [B*MB, BS, Hkv, D]
    cache = torch.empty((B * mb + spare, block_size, hkv, d), dtype=k.dtype)
    cache[order[: B * mb]] = logical
    if spare:
        cache[order[B * mb :]] = logical[:1].expand(spare, -1, -1, -1)
    return cache, order[: B * mb].reshape(B, mb).to(torch.int32)


def never_ascending(order: torch.Tensor, lens: list[int], mb: int, block_size: int) -> torch.Tensor:
    """The shuffled pool order with each sequence's used blocks (2 or more) never in ascending physical order,
    so reading the pool in physical order is always wrong (a shuffle alone leaves 2 blocks in order half the time)."""
    order = order.clone()
    for b, n in enumerate(lens):
        used = order[b * mb : b * mb + -(-n // block_size)]  # a view: flipped in place
        if used.numel() >= 2 and bool((used[1:] > used[:-1]).all()):
            used.copy_(used.flip(0))
    return order


def gathering(attention: Callable[..., Any]) -> Callable[..., Any]:
    """An attention method written for the contiguous form, made to take the paged form too: a block_table's
    cache is gathered in logical order first (torch-cpu's way). For plugins and the planted faults, whose own
    mistake then shows on the paged form as on the contiguous one."""

    @functools.wraps(attention)
    def wrapper(self: Any, q: Any, k: Any, v: Any, *, block_table: Any = None, kv_lens: Any = None, **kw: Any) -> Any:
        if block_table is not None:
            if kv_lens is None:
                raise ContractError("attention input kv_lens: required with block_table")
            k, v = to_contiguous(k, v, block_table, kv_lens)  # [B, Hkv, MB*BS, D]
        return attention(self, q, k, v, kv_lens=kv_lens, **kw)

    del wrapper.__wrapped__  # inspect.signature must show block_table (harness.backend.check_accepts reads it)
    return wrapper
