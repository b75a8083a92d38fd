"""Test plugin: torch-cpu variants exercising runner hooks that CUDA uses (input rotation, run-time refusals)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, ClassVar

import torch

from harness.backend import UnsupportedCaseError
from harness.backends.onnxruntime import OrtCpu
from harness.backends.torch_cpu import TorchCpu
from harness.timing import TimingConfig


class RotatingCpu(TorchCpu):
    """Asks the runner for three input sets while timing, and counts the distinct q tensors it was given."""

    name: ClassVar[str] = "rotating-cpu"
    seen: ClassVar[set[int]] = set()

    def timing_input_sets(self, nbytes: int, config: TimingConfig) -> int:
        return 3

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        RotatingCpu.seen.add(q.data_ptr())
        return super().attention(q, k, v, **kw)

    def case_details(self) -> dict[str, Any]:
        return {"distinct_q": len(RotatingCpu.seen)}


class RefusingCpu(TorchCpu):
    """Refuses GQA attention only on trying, as a vendor kernel does."""

    name: ClassVar[str] = "refusing-cpu"

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        if q.shape[1] != k.shape[1]:
            raise UnsupportedCaseError("this kernel takes no GQA (Hq != Hkv)")
        return super().attention(q, k, v, **kw)


class SwallowingCpu(TorchCpu):
    """Gets a Ctrl-C in the middle of its op and, like some vendor libraries, swallows the KeyboardInterrupt."""

    name: ClassVar[str] = "swallowing-cpu"

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        except BaseException:  # swallowing it is the behaviour under test
            pass
        return super().attention(q, k, v, **kw)


class BoundOrtCpu(OrtCpu):
    """ort-cpu through the IO-binding path that the device providers (ort-cuda, ort-cann) take."""

    name: ClassVar[str] = "ort-cpu-iobinding"
    io_binding: ClassVar[bool] = True
