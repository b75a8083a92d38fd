"""`dist.moe_ep`: the MoE layer with its experts partitioned across the ranks of a torchrun job (expert
parallelism), judged exactly as `moe.layer` is (routing token by token, the free output end to end, and the
layer under the reference's routing as the primary verdict) against the same float64 single-device reference.

Every rank runs the case together (`collective`); the backend's `moe_ep` op gets the process group of the
backend's collective backend (harness/collective.py). Tiny and small shapes run on any number of ranks; the
real shapes carry DeepSeek-V3's 256 and Qwen3-MoE's 128 experts over 8 and 16 ranks, and a run on another
number of ranks skips them naming the world size they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.collective import world_size
from harness.lazy import torch
from harness.models.moe import REAL_TOKENS, SMALL, TINY, MoeLayer, MoeShape, _weights
from harness.models.shapes import MOE_MODELS
from harness.workload import Workload, WorkloadUnavailableError


@dataclass(frozen=True)
class DistMoeShape(MoeShape):
    world: int = 0  # the number of ranks the shape is meant for; 0: any

    def describe(self) -> str:
        return super().describe() + (f" ep{self.world}" if self.world else "")


def check_world(name: str, world: int) -> None:
    """A shape made for `world` ranks on a run of another size is a skip naming the size it needs."""
    have = world_size()
    if world and world != have:
        raise WorkloadUnavailableError(
            f"{name} needs a world of {world} ranks (torchrun --nproc-per-node {world}, or nodes x processes = "
            f"{world}); this run has {have}"
        )


class DistMoe(MoeLayer):
    """Route + experts + combine (+ shared expert) with the experts spread over the ranks."""

    op: ClassVar[str] = "moe_ep"
    collective: ClassVar[bool] = True
    quant_formats: ClassVar[tuple[str, ...]] = ()  # moe_ep takes no quant=: a w8a8 case would run unquantized

    def make_inputs(
        self, shape: DistMoeShape, dtype: torch.dtype, seed: int, distribution: str
    ) -> dict[str, torch.Tensor]:
        check_world(f"{self.name} shape {shape.describe()}", shape.world)  # before generating real-size weights
        return _weights(shape, dtype, seed, distribution)


def _presets() -> dict[str, dict[str, DistMoeShape]]:
    real = {
        f"{model}-ep{world}": DistMoeShape(t=REAL_TOKENS[model], dims=MOE_MODELS[model], world=world)
        for model in ("deepseek-v3", "qwen3-moe")
        for world in (8, 16)
    }
    return {
        "tiny": {name: DistMoeShape(t=64, dims=dims) for name, dims in TINY.items()},
        "small": {name: DistMoeShape(t=256, dims=dims) for name, dims in SMALL.items()},
        "real": real,
    }


def workloads() -> list[Workload]:
    return [
        DistMoe(
            "dist.moe_ep",
            _presets(),
            "expert-parallel MoE: experts over the ranks, all_to_all dispatch and combine; judged as moe.layer",
        )
    ]
