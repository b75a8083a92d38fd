"""The production CPU path: torch's own kernels (SDPA, rms_norm) in the case dtype on the host CPU."""

from __future__ import annotations

from typing import ClassVar

from harness.backend import Availability
from harness.names import QUANT_FORMATS
from harness.torch_backend import TorchBackend


class TorchCpu(TorchBackend):
    name: ClassVar[str] = "torch-cpu"
    device: ClassVar[str] = "cpu"
    eager_reference: ClassVar[bool] = True  # eager torch on the CPU: the reference of the 10x speedup notice
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "bfloat16", "float16", *QUANT_FORMATS})
    description: ClassVar[str] = "torch CPU kernels (SDPA with an explicit bottom-right mask) in the case dtype"

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True)
