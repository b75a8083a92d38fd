"""Case dtype names and their torch dtypes, in a module of their own: workloads, backends and the runner all
need them, and none of those should have to import another just for this table."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from harness.lazy import torch
from harness.names import DTYPE_NAMES, QUANT_CARRIER, QUANT_FORMATS, BadInputError, unknown_name


class _Dtypes(Mapping[str, "torch.dtype"]):
    """Case dtype name -> torch dtype; the names are known without importing torch (harness list, --help). A
    quantized format maps to its carrier (bfloat16): the dtype its inputs are generated in and its output has."""

    def __getitem__(self, name: str) -> torch.dtype:
        if name not in DTYPE_NAMES:
            raise KeyError(name)
        return getattr(torch, QUANT_CARRIER if name in QUANT_FORMATS else name)

    def __contains__(self, name: object) -> bool:
        return name in DTYPE_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(DTYPE_NAMES)

    def __len__(self) -> int:
        return len(DTYPE_NAMES)


DTYPES: Mapping[str, torch.dtype] = _Dtypes()


class DtypeError(BadInputError):
    """A dtype the harness has no budget for (an integer dtype, a typo)."""


def is_quantized(dtype: str) -> bool:
    """Whether a case dtype is a quantized format (w8a8, fp8, fp8-block) rather than a float dtype."""
    return dtype in QUANT_FORMATS


def dtype_name(dtype: str | torch.dtype) -> str:
    """The case dtype name of `dtype`, given as a name ("float32"), torch's spelling ("torch.float32") or a
    torch.dtype: the pytest helpers take whichever a user has at hand. Anything else: DtypeError, naming the
    accepted names and the nearest one."""
    text = str(dtype)  # a torch.dtype prints as "torch.float32"; torch is not imported for this
    name = text.removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise DtypeError(unknown_name("dtype", text, DTYPE_NAMES))
    return name
