"""The Ascend adapter's MoE (a mixin of `Ascend`): gating on npu_moe_gating_top_k(_softmax), the experts on the
vllm-ascend kernel chain (init_routing_v2 -> grouped matmul -> swiglu -> unpermute), and expert parallel on
npu_moe_distribute_dispatch / combine where the SoC allows (fused_ep.py).
"""

from __future__ import annotations

from typing import Any

from harness.backends.ascend.fused_ep import FusedExpertParallel, grouped_swiglu, limits_for, refusal
from harness.lazy import F, torch
from harness.op_types import Experts, MoeArgs, Routing, RoutingSpec, SharedExpert


class AscendMoeOps:
    """`route`, `experts` and `moe_ep` of the Ascend adapter."""

    tnpu: Any
    npu: Any
    device: str
    _details: dict[str, Any]

    def route(self, logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
        """npu_moe_gating_top_k_softmax (softmax; renormalized here when asked, the op does not) or
        npu_moe_gating_top_k with norm_type 1 and group mode 1 (DeepSeek: sigmoid, bias, top-2 sum groups)."""
        if spec.scheme == "softmax_topk":
            weights, ids, _ = self.tnpu.npu_moe_gating_top_k_softmax(logits, None, k=spec.top_k)
            weights = weights.float()
            if spec.renormalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            return Routing((weights * spec.scaling).to(logits.dtype), ids.long())
        if not spec.renormalize:
            raise NotImplementedError(
                "npu_moe_gating_top_k renormalizes sigmoid scores: renormalize=False is not mappable"
            )
        weights, ids, _ = self.tnpu.npu_moe_gating_top_k(
            logits,
            spec.top_k,
            bias=bias,
            k_group=spec.topk_group,
            group_count=spec.n_group,
            group_select_mode=1,
            norm_type=1,
            routed_scaling_factor=spec.scaling,
        )
        return Routing(weights, ids.long())

    def router_logits(self, x: torch.Tensor, router_w: torch.Tensor) -> torch.Tensor:
        return x @ router_w.T  # [T, E] in the case dtype: the gating kernels take it as the model has it

    def experts(self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None) -> torch.Tensor:
        """npu_moe_init_routing_v2 (counts) -> npu_grouped_matmul(w13) -> npu_swiglu -> npu_grouped_matmul(w2)
        -> npu_moe_token_unpermute(probs), the vllm-ascend order (after the gating of `route`)."""
        T, E = x.shape[0], experts.w_gate.shape[0]
        weights, ids = routing.weights, routing.ids
        expanded, row_idx, counts, _ = self.tnpu.npu_moe_init_routing_v2(
            x,
            ids.to(torch.int32),
            active_num=T * ids.shape[1],
            expert_num=E,
            expert_tokens_num_type=1,
            expert_tokens_num_flag=True,
        )
        y = grouped_swiglu(self.tnpu, expanded, experts, counts)  # [T*k, H]
        out = self.tnpu.npu_moe_token_unpermute(y, row_idx, probs=weights.to(y.dtype))  # [T, H]
        if shared is not None:
            out = (out.float() + shared.apply(x, self._swiglu_mlp).float()).to(x.dtype)
        return out

    def moe_ep(self, x: Any, router_w: Any, w_gate: Any, w_up: Any, w_down: Any, spec: RoutingSpec, *,
               bias: Any = None, shared: SharedExpert | None = None, routing: Routing | None = None,
               group: Any = None) -> tuple[torch.Tensor, Routing]:  # fmt: skip
        """Expert parallel through npu_moe_distribute_dispatch / _combine where the SoC's documented limits allow
        (backends/ascend/fused_ep.py); elsewhere the contract's default, the reason in case_details()["moe_ep"]."""
        import torch.distributed as dist

        args = MoeArgs(x, router_w, Experts(w_gate, w_up, w_down), spec, bias, shared, routing)
        world, name = dist.get_world_size(group), self.npu.get_device_name()
        limits = self.distribute_limits(name)
        why = refusal(limits, args, world, name)
        if why is not None:
            self._details["moe_ep"] = {"path": "all_to_all_single (Backend.moe_ep default)", "why": why}
            return super().moe_ep(x, router_w, w_gate, w_up, w_down, spec, bias=bias, shared=shared,
                                  routing=routing, group=group)  # fmt: skip
        self._details["moe_ep"] = {"path": "npu_moe_distribute_dispatch -> npu_grouped_matmul -> "
                                   "npu_moe_distribute_combine", "soc": limits.soc}  # fmt: skip
        return FusedExpertParallel().run(self, args, group, self.hccl_comm_name(group))

    def distribute_limits(self, device_name: str) -> Any:
        """The documented limits of the fused EP pair on this SoC (fused_ep.DistributeLimits), None if undocumented."""
        return limits_for(device_name)

    def hccl_comm_name(self, group: Any) -> str:
        """group_ep: the HCCL communicator name of `group` for this rank, as the op-plugin docs get it."""
        import torch.distributed as dist

        return group._get_backend(torch.device(self.device)).get_hccl_comm_name(dist.get_rank())

    def _swiglu_mlp(self, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> Any:
        """The shared expert's MLP on npu_swiglu (fused gate / up halves), as the routed experts run: [T, H]."""
        return F.linear(self.tnpu.npu_swiglu(torch.cat([x @ w_gate.T, x @ w_up.T], dim=-1)), w_down)
