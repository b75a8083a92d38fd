"""transformers' own MoE blocks <-> the kernel contract's input names, for four model families.

Used to check the reference against transformers (tests), to benchmark torch-cpu beside transformers on the same
weights, and by LLM workloads that route a model's MoE layers through a backend's `moe` op. transformers is
imported only when a function here is called.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.models.shapes import MoeDims

FAMILIES = ("mixtral", "qwen3-moe", "qwen2-moe", "deepseek-v3")  # each block class, named by its model family


def build_block(family: str, dims: MoeDims, *, implementation: str = "eager") -> torch.nn.Module:
    """An uninitialized transformers MoE block of the model `family` (one of FAMILIES) with `dims`;
    `implementation` is transformers' experts implementation (eager loops over experts and runs in float64;
    grouped_mm is its fast default)."""
    from transformers import DeepseekV3Config, MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    common: dict[str, Any] = {"hidden_size": dims.h, "num_experts_per_tok": dims.top_k}
    if family == "mixtral":
        config, cls = MixtralConfig(intermediate_size=dims.f, num_local_experts=dims.e, **common), MixtralSparseMoeBlock
    elif family == "qwen3-moe":
        config = Qwen3MoeConfig(
            moe_intermediate_size=dims.f, num_experts=dims.e, norm_topk_prob=dims.renormalize, **common
        )
        cls = Qwen3MoeSparseMoeBlock
    elif family == "qwen2-moe":
        config = Qwen2MoeConfig(
            moe_intermediate_size=dims.f,
            num_experts=dims.e,
            norm_topk_prob=dims.renormalize,
            shared_expert_intermediate_size=dims.shared_f,
            **common,
        )
        cls = Qwen2MoeSparseMoeBlock
    elif family == "deepseek-v3":
        if dims.shared_f % dims.f:
            raise ValueError(f"DeepSeek-V3 shared experts come in units of F={dims.f}; got shared_f={dims.shared_f}")
        config = DeepseekV3Config(
            moe_intermediate_size=dims.f,
            n_routed_experts=dims.e,
            n_group=dims.n_group,
            topk_group=dims.topk_group,
            routed_scaling_factor=dims.scaling,
            norm_topk_prob=dims.renormalize,
            n_shared_experts=dims.shared_f // dims.f,
            **common,
        )
        cls = DeepseekV3MoE
    else:
        raise ValueError(f"model family {family!r} is not one of: {', '.join(FAMILIES)}")
    config._experts_implementation = implementation
    return cls(config)


def _shared_module(block: torch.nn.Module) -> torch.nn.Module | None:
    return getattr(block, "shared_expert", None) or getattr(block, "shared_experts", None)


def contract_inputs(block: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers MoE block's weights under the kernel contract's input names (flat, as --inputs takes)."""
    experts = block.experts
    f = experts.down_proj.shape[-1]
    inputs = {
        "router_w": block.gate.weight,  # [E, H]
        "w_gate": experts.gate_up_proj[:, :f],  # [E, F, H]: gate rows first in the fused projection
        "w_up": experts.gate_up_proj[:, f:],  # [E, F, H]
        "w_down": experts.down_proj,  # [E, H, F]
    }
    shared = _shared_module(block)
    if shared is not None:
        inputs["shared_w_gate"] = shared.gate_proj.weight
        inputs["shared_w_up"] = shared.up_proj.weight
        inputs["shared_w_down"] = shared.down_proj.weight
    if hasattr(block, "shared_expert_gate"):
        inputs["shared_gate"] = block.shared_expert_gate.weight  # [1, H]
    bias = getattr(block.gate, "e_score_correction_bias", None)
    if bias is not None:
        inputs["bias"] = bias
    return {name: t.detach() for name, t in inputs.items()}


def load_contract_inputs(block: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Copy contract-named weights into a transformers block (the inverse of contract_inputs)."""
    with torch.no_grad():
        block.gate.weight.copy_(inputs["router_w"])
        block.experts.gate_up_proj.copy_(torch.cat([inputs["w_gate"], inputs["w_up"]], dim=1))
        block.experts.down_proj.copy_(inputs["w_down"])
        shared = _shared_module(block)
        if shared is not None:
            shared.gate_proj.weight.copy_(inputs["shared_w_gate"])
            shared.up_proj.weight.copy_(inputs["shared_w_up"])
            shared.down_proj.weight.copy_(inputs["shared_w_down"])
        if hasattr(block, "shared_expert_gate"):
            block.shared_expert_gate.weight.copy_(inputs["shared_gate"])
        if "bias" in inputs:
            block.gate.e_score_correction_bias.copy_(inputs["bias"])
    return block
