"""The distributed ops of the kernel contract on Backend (a mixin, so backend.py stays one job): their default
implementations run the backend's own single-device ops on its share and torch.distributed collectives on the
process group the runner hands in (harness/collective.py). A backend with a fused kernel overrides the op.
"""

from __future__ import annotations

from typing import Any

from harness.expert_parallel import ExpertParallel
from harness.lazy import torch
from harness.op_types import Experts, MoeArgs, Routing, RoutingSpec, SharedExpert
from harness.tensor_parallel import TensorParallelAttention
from harness.tensor_parallel_lm import DecoderSpec, DecoderWeights, TensorParallelDecoder


class CollectiveOps:
    """`moe_ep`, `attention_tp` and `llm_tp`: each takes `group`, the torch.distributed process group to run across."""

    def moe_ep(
        self,
        x: torch.Tensor,
        router_w: torch.Tensor,
        w_gate: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        spec: RoutingSpec,
        *,
        bias: torch.Tensor | None = None,
        shared: SharedExpert | None = None,
        routing: Routing | None = None,
        group: Any = None,
    ) -> tuple[torch.Tensor, Routing]:
        """`moe` with the experts partitioned across `group` (harness/expert_parallel.py): the same contract and
        result on every rank, ([T, H], the Routing applied)."""
        args = MoeArgs(x, router_w, Experts(w_gate, w_up, w_down), spec, bias, shared, routing)
        return ExpertParallel().run(self, args, group)

    def attention_tp(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = False,
        window: int | None = None,
        scale: float | None = None,
        group: Any = None,
    ) -> torch.Tensor:
        """`attention` with the heads split across `group` (harness/tensor_parallel.py), output gathered."""
        return TensorParallelAttention().run(self, q, k, v, group, causal=causal, window=window, scale=scale)

    def llm_tp(
        self,
        input_ids: torch.Tensor,
        *weights: torch.Tensor,
        heads: int,
        kv_heads: int,
        eps: float = 1e-6,
        rope_theta: float = 10000.0,
        group: Any = None,
    ) -> torch.Tensor:
        """A pre-norm decoder (RMSNorm, rope attention, SwiGLU MLP, final norm, LM head) tensor-parallel across
        `group` (harness/tensor_parallel_lm.py): input_ids [B,S] and the 12 weights in DecoderWeights' order ->
        logits [B,S,V] in the weights' dtype, on every rank. Built from `rms_norm`, `rope`, `attention` and
        `swiglu`."""
        spec = DecoderSpec(heads, kv_heads, eps, rope_theta)
        return TensorParallelDecoder().run(self, input_ids, DecoderWeights(*weights), spec, group)
