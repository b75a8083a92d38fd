"""Binding a backend's ops into a transformers model, and running it (prefill, KV-cache decode).

A model is built once in float64 on the host (the master). Each backend gets a copy in the case dtype on its
device, with the backend's ops bound into it: attention (and rope) through `backend.attention` / `backend.rope`,
RMSNorm through `backend.rms_norm`, MoE blocks through `backend.moe`; embeddings and dense projections stay
transformers' own code. The reference is the master bound to harness.ops, the float64 oracle.

The KV cache reaches the bound attention by type, not by keyword: transformers 5.24 renamed `past_key_values`
to `cache`, and an attention that looked for the old name silently decoded without its cache. The decode
self-check (models/llm_decode.py) proves on every case that the cache is used.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness import ops
from harness.lazy import nn, torch
from harness.models.llm_config import moe_dims
from harness.models.shapes import MoeDims
from harness.op_types import moe_kwargs
from harness.workload import WorkloadError

CACHE_KEYWORDS = ("cache", "past_key_values")  # transformers >= 5.24, and before


def is_cache(value: Any) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


def kv_cache(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache among the keyword arguments transformers passes an attention module (None in a forward
    without one). Found by type, so a renamed keyword cannot leave the cache unused in `**kwargs`."""
    caches = [v for v in kwargs.values() if is_cache(v)]
    if len(caches) > 1:
        raise WorkloadError(f"transformers passed {len(caches)} KV caches to one attention module; expected one")
    return caches[0] if caches else None


@functools.cache
def cache_keyword(model_class: type) -> str:
    """The keyword a causal-LM class's `forward` takes its KV cache under in the installed transformers."""
    params = inspect.signature(model_class.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in params:
            return name
    raise WorkloadError(
        f"{model_class.__name__}.forward takes none of {', '.join(CACHE_KEYWORDS)}: this transformers version "
        "passes the KV cache in a way the harness does not know"
    )


# ----- the bound ops -----


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "weight")


def _rms_norm_forward(module: nn.Module, kernels: Any, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    return kernels.rms_norm(x, module.weight, eps)


def _rope_half(kernels: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotate_half rope through the backend: x [B, H, S, D], cos / sin [B, S, D]."""
    return kernels.rope(x, cos[:, None], sin[:, None], "half")


def _attention(kernels: Any, module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    window = getattr(module, "sliding_window", None)
    return kernels.attention(q, k, v, causal=True, window=window, scale=module.scaling)  # [B, Hq, S, Dv]


def _llama_attention_forward(
    module: nn.Module,
    kernels: Any,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Llama / Qwen3 / Mixtral attention (Qwen3's per-head q/k norms included) on the backend's ops."""
    B, S, _ = hidden_states.shape
    shape = (B, S, -1, module.head_dim)
    q = module.q_proj(hidden_states).view(shape)  # [B, S, Hq, D]
    k = module.k_proj(hidden_states).view(shape)  # [B, S, Hkv, D]
    if hasattr(module, "q_norm"):
        q, k = module.q_norm(q), module.k_norm(k)
    v = module.v_proj(hidden_states).view(shape).transpose(1, 2)  # [B, Hkv, S, D]
    cos, sin = position_embeddings
    q = _rope_half(kernels, q.transpose(1, 2), cos, sin)  # [B, Hq, S, D]
    k = _rope_half(kernels, k.transpose(1, 2), cos, sin)  # [B, Hkv, S, D]
    cache = kv_cache(kwargs)
    if cache is not None:
        k, v = cache.update(k, v, module.layer_idx)
    out = _attention(kernels, module, q, k, v).transpose(1, 2).reshape(B, S, -1)  # [B, S, Hq*D]
    return module.o_proj(out), None


def _mla_attention_forward(
    module: nn.Module,
    kernels: Any,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """DeepSeek-V3 multi-head latent attention on the backend's ops: qk head dim != v head dim."""
    B, S, _ = hidden_states.shape
    if module.q_lora_rank is None:
        q = module.q_proj(hidden_states)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(hidden_states)))
    q = q.view(B, S, -1, module.qk_head_dim).transpose(1, 2)  # [B, H, S, Dqk]
    q_pass, q_rot = torch.split(q, [module.qk_nope_head_dim, module.qk_rope_head_dim], dim=-1)
    kv_nope, k_rot = torch.split(
        module.kv_a_proj_with_mqa(hidden_states), [module.kv_lora_rank, module.qk_rope_head_dim], dim=-1
    )
    kv_nope = module.kv_a_layernorm(kv_nope).view(B, 1, S, module.kv_lora_rank)
    k_rot = k_rot.view(B, 1, S, module.qk_rope_head_dim)
    cos, sin = position_embeddings
    if module.config.rope_interleave:
        # transformers rotates interleaved pairs and writes them de-interleaved: half-style rope on the
        # de-interleaved vector is the same map.
        q_rot = torch.cat([q_rot[..., 0::2], q_rot[..., 1::2]], dim=-1)
        k_rot = torch.cat([k_rot[..., 0::2], k_rot[..., 1::2]], dim=-1)
    q_rot, k_rot = _rope_half(kernels, q_rot, cos, sin), _rope_half(kernels, k_rot, cos, sin)
    cache = kv_cache(kwargs)
    if cache is not None:
        kv_nope, k_rot = cache.update(kv_nope, k_rot, module.layer_idx)
    query = torch.cat((q_pass, q_rot), dim=-1)  # [B, H, S, Dqk]
    key, value = module.expand_kv(kv_nope, k_rot)  # [B, H, Skv, Dqk], [B, H, Skv, Dv]
    out = _attention(kernels, module, query, key, value).transpose(1, 2).reshape(B, S, -1)
    return module.o_proj(out), None


def _moe_forward(module: nn.Module, kernels: Any, dims: MoeDims, hidden_states: torch.Tensor) -> torch.Tensor:
    """A transformers MoE block through the backend's `moe` op (weights are views: no copies per call)."""
    from harness.models.hf_moe import contract_inputs

    shape = hidden_states.shape
    w = contract_inputs(module)
    tensors = [w[n] for n in ("router_w", "w_gate", "w_up", "w_down")]
    out, _ = kernels.moe(hidden_states.reshape(-1, shape[-1]), *tensors, dims.spec, **moe_kwargs(w))
    return out.reshape(shape)


def bind(model: nn.Module, kernels: Any) -> nn.Module:
    """Route the model's attention, rope, RMSNorm and MoE blocks through `ops` (a backend, or harness.ops)."""
    dims = None
    for module in model.modules():
        kind = type(module).__name__
        if _is_rms_norm(module):
            module.forward = functools.partial(_rms_norm_forward, module, kernels)
        elif kind.endswith("Attention") and hasattr(module, "kv_a_proj_with_mqa"):
            module.forward = functools.partial(_mla_attention_forward, module, kernels)
        elif kind.endswith("Attention") and hasattr(module, "q_proj"):
            module.forward = functools.partial(_llama_attention_forward, module, kernels)
        elif hasattr(module, "experts") and hasattr(module, "gate"):
            dims = dims or moe_dims(model.config)
            module.forward = functools.partial(_moe_forward, module, kernels, dims)
    return model


@dataclass(eq=False)
class LlmModel:
    """The float64 master of a workload model, and its bound copies per backend, dtype and device.

    `shared` holds what depends on the master alone (its float64 reference copy and the reference's results):
    the case dtypes of one seed share one dict, so the reference runs once for all of them."""

    master: nn.Module
    dtype: torch.dtype
    name: str
    shared: dict[Any, Any] = field(default_factory=dict, repr=False)
    _copies: dict[tuple[str, str], nn.Module] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> Any:
        return self.master.config

    def reference(self) -> nn.Module:
        """The master bound to the float64 oracle (harness.ops): the reference."""
        return self.cached("reference", lambda: _bound_copy(self.master, ops, torch.float64, "cpu"))

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """A result of the reference (which no case dtype changes), computed once per master."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def for_backend(self, backend: Any) -> nn.Module:
        key = (backend.name, backend.device)
        if key not in self._copies:
            self._copies[key] = _bound_copy(self.master, backend, self.dtype, backend.device)
        return self._copies[key]

    def run(self, backend: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        """What a torch backend's `causal_lm` does: its bound copy, or that copy's logits."""
        bound = self.for_backend(backend)
        return bound if return_model else forward(bound, input_ids, cache)

    def reference_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to("cpu")
        return self.cached(
            ("logits", tuple(ids.shape), tuple(ids.flatten().tolist())), lambda: forward(self.reference(), ids)
        )


def _bound_copy(master: nn.Module, kernels: Any, dtype: torch.dtype, device: str) -> nn.Module:
    copied = copy.deepcopy(master).to(device=device, dtype=dtype)
    prepare = getattr(kernels, "prepare_llm", None)
    if prepare is not None:
        prepare(copied)  # a port's weight conversion (or a planted fault) before its ops are bound
    return bind(copied, kernels)


def forward(
    model: nn.Module, input_ids: torch.Tensor, cache: Any = None, *, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits [B, S, V] of one forward; with a transformers Cache, appends to it (KV-cache decode).

    `position_ids` [B, S] default to the cache's length onwards, as in transformers."""
    kwargs = {cache_keyword(type(model)): cache} if cache is not None else {}
    with torch.no_grad():
        out = model(input_ids=input_ids, position_ids=position_ids, use_cache=cache is not None, **kwargs)
    return out.logits


def new_cache(model: nn.Module) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)
