"""A backend that SIGKILLs its own process on its second attention call, on torchrun rank 1 only (RANK=1): a rank
killed mid-sweep after writing a record. Anywhere else (rank 0, a single-process run) it is torch-cpu."""

from __future__ import annotations

import os
import signal
from typing import ClassVar

from harness.backends.torch_cpu import TorchCpu


class RankKiller(TorchCpu):
    name: ClassVar[str] = "rank-killer-cpu"
    calls: ClassVar[int] = 0

    def attention(self, q, k, v, **kwargs):  # type: ignore[override]
        RankKiller.calls += 1
        if os.environ.get("RANK") == "1" and RankKiller.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().attention(q, k, v, **kwargs)
