"""A test plugin: an expert-parallel layer exact on one rank whose combine picks up a relative error of 6e-6 on
more ranks: inside the float32 parity budget (rel_l2 1e-5), but an error that grows with the world size, which
the layout verdict (harness/layout.py) must fail naming the layout."""

from __future__ import annotations

from typing import ClassVar

import torch

from harness.backends.torch_cpu import TorchCpu
from harness.expert_parallel import ExpertParallel
from harness.op_types import Experts, MoeArgs


class _Drifting(ExpertParallel):
    def combine(self, back: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        out = super().combine(back, order)
        if not torch.equal(order, torch.arange(order.numel())):  # rows left this rank: more than one rank
            signs = torch.where(torch.arange(out.numel()) % 2 == 0, 1.0, -1.0).reshape(out.shape)
            out = out * (1 + 6e-6 * signs)
        return out


class LayoutDrift(TorchCpu):
    name: ClassVar[str] = "layout-drift"

    def moe_ep(self, x, router_w, w_gate, w_up, w_down, spec, *, bias=None, shared=None, routing=None, group=None):  # type: ignore[override]
        args = MoeArgs(x, router_w, Experts(w_gate, w_up, w_down), spec, bias, shared, routing)
        return _Drifting().run(self, args, group)
