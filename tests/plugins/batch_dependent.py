"""A backend whose attention output depends on the batch it is served in: torch-cpu scaled by (1 + 1e-6 * B).
Within the float32 parity budget (rel_l2 ~2e-6 against 1e-5), but a row run alone differs: not batch invariant."""

from __future__ import annotations

from typing import ClassVar

from harness.backends.torch_cpu import TorchCpu


class BatchDependent(TorchCpu):
    name: ClassVar[str] = "batch-dependent-cpu"

    def attention(self, q, k, v, **kwargs):  # type: ignore[override]
        return super().attention(q, k, v, **kwargs) * (1.0 + 1e-6 * q.shape[0])  # q [B, Hq, Sq, D]
