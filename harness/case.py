"""A case and the seeded inputs workloads make for it.

A case is one point of workload x preset x shape x dtype x inputs x seed x backend; its key is stable across
runs and machines. Inputs are generated on the host from the seed and the tensor's name, so they do not depend
on generation order. Re-exported by harness.workload, the import path workloads use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.lazy import torch
from harness.names import DISTRIBUTIONS, BadInputError, unknown_name
from harness.op_types import TensorGroup

USER_SHAPE = "user"  # the shape name of a case run on the user's own tensors (--inputs)


class WorkloadError(BadInputError):
    """An unknown workload, preset or shape, or user inputs that do not fit a workload."""


class WorkloadUnavailableError(RuntimeError):
    """A workload that cannot run here (a missing optional dependency): its cases are skipped with the reason."""


@dataclass(frozen=True, order=True)
class Case:
    """One unit of work and of results; `key` is stable across runs and machines (resume, compare, --against)."""

    workload: str
    preset: str
    shape: str
    dtype: str
    inputs: str
    seed: int
    backend: str
    op: str = field(compare=False)

    @property
    def input_key(self) -> str:
        """Everything that determines the inputs and the reference, i.e. the key without the backend."""
        return f"{self.workload}/{self.preset}/{self.shape}/{self.dtype}/{self.inputs}/seed{self.seed}"

    @property
    def key(self) -> str:
        return f"{self.input_key}@{self.backend}"

    def to_record(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "workload": self.workload,
            "op": self.op,
            "preset": self.preset,
            "shape": self.shape,
            "dtype": self.dtype,
            "inputs": self.inputs,
            "seed": self.seed,
            "backend": self.backend,
        }


def generator(seed: int, *salt: str) -> torch.Generator:
    """A CPU generator seeded by the seed and the tensor's name, so inputs do not depend on generation order."""
    mixed = seed * 1_000_003
    for s in salt:
        for ch in s:
            mixed = (mixed * 31 + ord(ch)) % (2**61 - 1)
    return torch.Generator().manual_seed(mixed)


def random_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, *, seed: int, name: str, distribution: str, scale: float = 1.0
) -> torch.Tensor:
    """Seeded host tensor in `dtype`. `stress`: 3x wider, with 0.2% outliers at +-8 sigma (overflow bait)."""
    if distribution not in DISTRIBUTIONS:
        raise WorkloadError(unknown_name("input distribution", distribution, DISTRIBUTIONS))
    gen = generator(seed, name, distribution)
    x = torch.randn(shape, generator=gen, dtype=torch.float32) * scale
    if distribution == "stress":
        x = x * 3.0
        outliers = torch.rand(shape, generator=gen) < 0.002
        signs = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
        x = torch.where(outliers, signs * 8.0 * 3.0 * scale, x)
    return x.to(dtype)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply fn to every tensor in a (nested) tuple / list / dict; other values (a model) pass through."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, TensorGroup):  # a Routing, a SharedExpert
        return value.map(fn)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value
