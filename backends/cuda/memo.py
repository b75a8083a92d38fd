"""Per-tensor memos that never compare tensors (a WeakKeyDictionary would call Tensor.__eq__ on a hash clash)."""

from __future__ import annotations

import weakref
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
PRUNE_AT = 256


class TensorMemo(Generic[T]):
    """A value derived from a tensor's contents, kept while that tensor object lives and is not modified.

    Keyed by id() and checked by identity and version counter (in-place writes bump it), so a freed tensor whose
    id is reused, or a tensor written in place, is never served a stale value."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[torch.Tensor], int, T]] = {}

    def get(self, t: torch.Tensor) -> T | None:
        entry = self._entries.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            return entry[2]
        return None

    def put(self, t: torch.Tensor, value: T) -> None:
        if len(self._entries) >= PRUNE_AT:
            self._entries = {k: e for k, e in self._entries.items() if e[0]() is not None}
        self._entries[id(t)] = (weakref.ref(t), t._version, value)
