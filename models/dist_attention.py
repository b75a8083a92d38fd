"""`dist.attention_tp`: attention with its heads split across the ranks of a torchrun job (tensor parallelism,
GQA groups kept whole), the output gathered on every rank, judged against the single-device float64 attention.
Prefill, decode and sliding-window shapes, GQA and MQA (MQA's one kv head lands on one rank: the others hold none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from harness import ops
from harness.lazy import torch
from harness.models.attention import AttentionWorkload
from harness.models.shapes import ATTENTION_MODELS, AttentionDims, AttentionShape
from harness.workload import CaseInputs, InvariancePart, Workload

TINY = {"gqa": AttentionDims(hq=8, hkv=4, d=32, dv=32), "mqa": AttentionDims(hq=4, hkv=1, d=32, dv=16)}
SMALL = {"gqa": AttentionDims(hq=16, hkv=4, d=64, dv=64), "mqa": AttentionDims(hq=8, hkv=1, d=64, dv=64)}


class DistAttention(AttentionWorkload):
    """Attention over heads split across the ranks."""

    op: ClassVar[str] = "attention_tp"
    collective: ClassVar[bool] = True

    def __init__(self, name: str, presets: Mapping[str, Mapping[str, AttentionShape]], description: str) -> None:
        Workload.__init__(self, name, presets, description)
        self.kind = "tp"  # prefill, decode and window shapes alike: saved inputs (--against DIR) of any of them fit

    def reference(self, inputs: Mapping[str, torch.Tensor], shape: AttentionShape) -> torch.Tensor:
        args, kwargs = self.split_args(inputs, shape)
        return ops.attention(*args, **kwargs)

    def invariance_parts(self, group: CaseInputs) -> tuple[InvariancePart, ...]:
        return ()


def _shapes(geometry: Mapping[str, AttentionDims], **kw: Any) -> dict[str, AttentionShape]:
    shapes: dict[str, AttentionShape] = {}
    for name, g in geometry.items():
        common = {"hq": g.hq, "hkv": g.hkv, "d": g.d, "dv": g.dv, "scale": g.scale}
        shapes[f"{name}-prefill"] = AttentionShape(b=kw["b"], sq=kw["s"], skv=kw["s"], **common)
        shapes[f"{name}-decode"] = AttentionShape(b=kw["b"], sq=1, skv=kw["s"], **common)
        shapes[f"{name}-window"] = AttentionShape(b=kw["b"], sq=kw["s"], skv=kw["s"], window=kw["s"] // 4, **common)
    return shapes


def workloads() -> list[Workload]:
    presets = {
        "tiny": _shapes(TINY, b=2, s=16),
        "small": _shapes(SMALL, b=2, s=256),
        "real": _shapes({n: d for n, d in ATTENTION_MODELS.items() if d.hkv > 1}, b=4, s=4096),
    }
    return [DistAttention("dist.attention_tp", presets, "attention with heads split over the ranks, gathered")]
