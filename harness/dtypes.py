"""Case dtype names and their torch dtypes, in a module of their own: workloads, backends and the runner all
need them, and none of those should have to import another just for this table."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from harness.lazy import torch
from harness.names import DTYPE_NAMES


class _Dtypes(Mapping[str, "torch.dtype"]):
    """Case dtype name -> torch dtype; the names are known without importing torch (harness list, --help)."""

    def __getitem__(self, name: str) -> torch.dtype:
        if name not in DTYPE_NAMES:
            raise KeyError(name)
        return getattr(torch, name)

    def __contains__(self, name: object) -> bool:
        return name in DTYPE_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(DTYPE_NAMES)

    def __len__(self) -> int:
        return len(DTYPE_NAMES)


DTYPES: Mapping[str, torch.dtype] = _Dtypes()
