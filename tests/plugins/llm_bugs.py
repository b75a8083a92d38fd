"""Planted LLM bugs: a rope in the wrong style, and a candidate model with one corrupted weight."""

from __future__ import annotations

from typing import ClassVar

import torch

from backends.torch_cpu import TorchCpu


class InterleavedRope(TorchCpu):
    """Rope kernel hard-wired to the interleaved (GPT-J) style, where the model uses half (GPT-NeoX) rope."""

    name: ClassVar[str] = "bug-rope-interleaved"

    def rope(self, x, cos, sin, style="half"):
        return super().rope(x, cos, sin, "interleave")  # the bug: the model's style is ignored


class CorruptedLayer2Mlp(TorchCpu):
    """A port whose converted checkpoint has one wrong weight in layer 2's MLP down projection."""

    name: ClassVar[str] = "bug-corrupt-layer2-mlp"

    def prepare_llm(self, module: torch.nn.Module) -> None:
        mlp = module.model.layers[2].mlp
        with torch.no_grad():
            if hasattr(mlp, "experts"):  # a MoE layer: the same weight of every expert
                mlp.experts.down_proj[:, 3, 5] += 5.0
            else:
                mlp.down_proj.weight[3, 5] += 5.0  # the bug: one weight off by 5
