"""A plain projection, x [T, K] @ w [N, K]^T: the matmul every layer is made of, and the smallest case of a
quantized format (w8a8, fp8, fp8-block; harness/quant.py) judged against its exact emulation.

Real shapes are projections of DeepSeek-V3 (hidden 7168: q_a 7168 -> 1536, o 16384 -> 7168, a routed expert's
gate 7168 -> 2048) and Qwen3 (Qwen3-30B-A3B q 2048 -> 4096, Qwen3-32B gate 5120 -> 25600) at 4096 tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from harness.dtypes import is_quantized
from harness.lazy import torch
from harness.names import QUANT_FORMATS
from harness.op_types import QuantSpec
from harness.workload import Workload, WorkloadError, random_tensor


@dataclass(frozen=True)
class LinearShape:
    t: int  # tokens
    k: int  # input features (the reduction)
    n: int  # output features
    quant: QuantSpec | None = None  # set per case by a quantized dtype (Workload.for_dtype)

    def describe(self) -> str:
        return f"T{self.t} K{self.k} N{self.n}" + (f" {self.quant.format}" if self.quant else "")


class Linear(Workload):
    """x [T, K] @ w [N, K]^T -> [T, N]; w scaled by K^-1/2 so the output stays O(1)."""

    op: ClassVar[str] = "linear"
    quant_formats: ClassVar[tuple[str, ...]] = QUANT_FORMATS

    def for_dtype(self, shape: LinearShape, dtype: str) -> LinearShape:
        return replace(shape, quant=QuantSpec(dtype) if is_quantized(dtype) else None)

    def make_inputs(
        self, shape: LinearShape, dtype: torch.dtype, seed: int, distribution: str
    ) -> dict[str, torch.Tensor]:
        return {
            "x": random_tensor((shape.t, shape.k), dtype, seed=seed, name="x", distribution=distribution),
            "w": random_tensor(
                (shape.n, shape.k), dtype, seed=seed, name="w", distribution="normal", scale=shape.k**-0.5
            ),
        }

    def op_kwargs(self, shape: LinearShape) -> dict[str, Any]:
        return {"quant": shape.quant} if shape.quant is not None else {}

    def flops(self, shape: LinearShape) -> float:
        return 2.0 * shape.t * shape.k * shape.n

    def bytes_moved(self, shape: LinearShape, itemsize: int) -> float:
        w_itemsize = 1 if shape.quant is not None else itemsize  # a quantized format reads 1-byte weights
        return float((shape.t * shape.k + shape.t * shape.n) * itemsize + shape.n * shape.k * w_itemsize)

    def reduction_length(self, shape: LinearShape) -> int:
        return shape.k

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: LinearShape) -> LinearShape:
        self.check_input_names(tensors)
        x, w = tensors["x"], tensors["w"]
        if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
            raise WorkloadError(
                f"{self.name}: inputs x [T, K] and w [N, K] expected; got {list(x.shape)} and {list(w.shape)}"
            )
        return replace(template, t=x.shape[0], k=x.shape[1], n=w.shape[0])


def _presets() -> dict[str, dict[str, LinearShape]]:
    return {
        # tiny: K and N not multiples of 128, so fp8-block has partial blocks in both dims
        "tiny": {"proj": LinearShape(32, 320, 192), "square": LinearShape(16, 128, 128)},
        "small": {"proj": LinearShape(256, 2048, 1024)},
        "real": {
            "deepseek-v3-q-a": LinearShape(4096, 7168, 1536),
            "deepseek-v3-o": LinearShape(4096, 16384, 7168),
            "deepseek-v3-expert-gate": LinearShape(4096, 7168, 2048),
            "qwen3-30b-a3b-q": LinearShape(4096, 2048, 4096),
            "qwen3-32b-gate": LinearShape(4096, 5120, 25600),
        },
    }


def workloads() -> list[Workload]:
    """The projection workload (the `harness.workloads` entry point `linear`)."""
    return [
        Linear(
            "linear.projection", _presets(), "x @ w^T: a plain projection, in every float dtype and quantized format"
        )
    ]
