"""Small LLM workloads: real transformers architectures with seeded weights, run through a backend's own ops.

A model is built once in float64 on the host (the master). Each backend gets a copy in the case dtype on its
device, with the backend's ops bound into it: attention (and rope) through `backend.attention` / `backend.rope`,
RMSNorm through `backend.rms_norm`, MoE blocks through `backend.moe`; embeddings and dense projections stay
transformers' own code. The reference is the master run with harness.ops, the float64 oracle. The same binding
serves the layer-wise localization: every op module can be replayed on the reference's own inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from harness import ops as oracle
from harness import parity
from harness.workload import (
    Call,
    CaseInputs,
    Evaluation,
    TimingVariant,
    Workload,
    WorkloadError,
    WorkloadUnavailableError,
    evaluate_tensor,
)
from models.shapes import MoeDims

ARCHS = ("llama3", "qwen3", "qwen3-moe", "mixtral", "deepseek-v3")
MODEL_TYPES = {
    "llama": "llama3",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3-moe",
    "mixtral": "mixtral",
    "deepseek_v3": "deepseek-v3",
}
OP_KINDS = {"input_layernorm": "norm", "self_attn": "attention", "post_attention_layernorm": "norm", "mlp": "mlp"}


class ModelLoadError(WorkloadError):
    """A --model directory that cannot be loaded: missing or corrupt files, an unsupported architecture."""


# ----- configs -----


def _common(size: str, vocab: int) -> dict[str, Any]:
    tiny = size == "tiny"
    return {
        "vocab_size": vocab,
        "hidden_size": 64 if tiny else 256,
        "num_hidden_layers": 4 if tiny else 6,
        "num_attention_heads": 4 if tiny else 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    }


def build_config(arch: str, size: str) -> Any:
    """A transformers config for a preset: `tiny` (CI, seconds) or `small` (CPU benchmarking)."""
    import transformers as tf

    tiny = size == "tiny"
    c = _common(size, vocab=256 if tiny else 1024)
    h = c["hidden_size"]
    if arch == "llama3":
        return tf.LlamaConfig(intermediate_size=2 * h, head_dim=h // c["num_attention_heads"], **c)
    if arch == "qwen3":
        return tf.Qwen3Config(intermediate_size=2 * h, head_dim=h // c["num_attention_heads"], **c)
    if arch == "qwen3-moe":
        return tf.Qwen3MoeConfig(
            intermediate_size=2 * h,
            moe_intermediate_size=h // 2,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            head_dim=h // c["num_attention_heads"],
            **c,
        )
    if arch == "mixtral":
        return tf.MixtralConfig(
            intermediate_size=2 * h,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=None,
            head_dim=h // c["num_attention_heads"],
            **c,
        )
    if arch == "deepseek-v3":
        c["num_key_value_heads"] = c["num_attention_heads"]
        return tf.DeepseekV3Config(
            intermediate_size=2 * h,
            moe_intermediate_size=h // 2,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            n_shared_experts=1,
            first_k_dense_replace=1,
            q_lora_rank=h // 2,
            kv_lora_rank=h // 2,
            qk_rope_head_dim=16,
            qk_nope_head_dim=16,
            v_head_dim=8,
            rope_interleave=True,
            **c,
        )
    raise WorkloadError(f"LLM architecture {arch!r} is not one of: {', '.join(ARCHS)}")


def _causal_lm_class(config: Any) -> type[nn.Module]:
    import transformers as tf

    classes = {
        "llama": tf.LlamaForCausalLM,
        "qwen3": tf.Qwen3ForCausalLM,
        "qwen3_moe": tf.Qwen3MoeForCausalLM,
        "mixtral": tf.MixtralForCausalLM,
        "deepseek_v3": tf.DeepseekV3ForCausalLM,
    }
    try:
        return classes[config.model_type]
    except KeyError:
        raise ModelLoadError(
            f"model_type {config.model_type!r} is not supported; supported: {', '.join(classes)}"
        ) from None


def _prepare(config: Any) -> Any:
    config._attn_implementation = "sdpa"  # the mask it builds is ignored: the bound attention is causal itself
    config._experts_implementation = "eager"  # runs in float64 (grouped_mm does not); replaced by backend.moe
    return config


def seeded_model(config: Any, seed: int) -> nn.Module:
    """A float64 model whose weights give confident, well-separated logits (HF's 0.02 init gives near-uniform
    ones, where every top-1 is a near-tie): linear weights ~ N(0, 1/fan_in), embeddings N(0, 1), norm gains ~ 1,
    router correction biases ~ N(0, 0.1^2), the LM head scaled up 4x."""
    model = _causal_lm_class(config)(_prepare(config)).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[-1]))
        model.lm_head.weight.mul_(4.0)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen, dtype=torch.float64))
    return model


def load_checkpoint(path: Path) -> nn.Module:
    """A user's checkpoint directory (config.json + safetensors), in float64; errors name the path."""
    import transformers as tf

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"--model {path}: {config_file} is missing (expected config.json + *.safetensors)")
    try:
        config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"--model {path}: {config_file} cannot be read: {exc}") from None
    cls = _causal_lm_class(config)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(f"--model {path}: no *.safetensors weight file in the directory")
    from safetensors import SafetensorError, safe_open

    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as fh:
                fh.keys()
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"--model {path}: weight file {file} is corrupt: {exc}") from None
    try:
        model = cls.from_pretrained(str(path), config=_prepare(config), local_files_only=True, dtype=torch.float64)
    except Exception as exc:  # transformers raises many types for a bad checkpoint; name the path either way
        raise ModelLoadError(f"--model {path}: loading failed: {type(exc).__name__}: {exc}") from None
    return model.double().eval()


# ----- binding a backend's ops into a model copy -----


def _is_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "weight")


def _rms_norm_forward(module: nn.Module, ops: Any, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    return ops.rms_norm(x, module.weight, eps)


def _rope_half(ops: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotate_half rope through the backend: x [B, H, S, D], cos / sin [B, S, D]."""
    return ops.rope(x, cos[:, None], sin[:, None], "half")


def _attention(ops: Any, module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    window = getattr(module, "sliding_window", None)
    return ops.attention(q, k, v, causal=True, window=window, scale=module.scaling)  # [B, Hq, S, Dv]


def _llama_attention_forward(
    module: nn.Module,
    ops: Any,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    past_key_values: Any = None,
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
    q = _rope_half(ops, q.transpose(1, 2), cos, sin)  # [B, Hq, S, D]
    k = _rope_half(ops, k.transpose(1, 2), cos, sin)  # [B, Hkv, S, D]
    if past_key_values is not None:
        k, v = past_key_values.update(k, v, module.layer_idx)
    out = _attention(ops, module, q, k, v).transpose(1, 2).reshape(B, S, -1)  # [B, S, Hq*D]
    return module.o_proj(out), None


def _mla_attention_forward(
    module: nn.Module,
    ops: Any,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    past_key_values: Any = None,
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
    q_rot, k_rot = _rope_half(ops, q_rot, cos, sin), _rope_half(ops, k_rot, cos, sin)
    if past_key_values is not None:
        kv_nope, k_rot = past_key_values.update(kv_nope, k_rot, module.layer_idx)
    query = torch.cat((q_pass, q_rot), dim=-1)  # [B, H, S, Dqk]
    key, value = module.expand_kv(kv_nope, k_rot)  # [B, H, Skv, Dqk], [B, H, Skv, Dv]
    out = _attention(ops, module, query, key, value).transpose(1, 2).reshape(B, S, -1)
    return module.o_proj(out), None


def moe_dims(config: Any) -> MoeDims:
    """The routing rule and geometry of a model's MoE blocks, from its transformers config."""
    h, k = config.hidden_size, config.num_experts_per_tok
    if config.model_type == "mixtral":
        return MoeDims(h, config.intermediate_size, config.num_local_experts, k, "softmax_topk", True)
    if config.model_type == "qwen3_moe":
        return MoeDims(h, config.moe_intermediate_size, config.num_experts, k, "softmax_topk", config.norm_topk_prob)
    if config.model_type == "deepseek_v3":
        f = config.moe_intermediate_size
        return MoeDims(
            h,
            f,
            config.n_routed_experts,
            k,
            "sigmoid_group_topk",
            config.norm_topk_prob,
            n_group=config.n_group,
            topk_group=config.topk_group,
            scaling=config.routed_scaling_factor,
            bias=True,
            shared_f=f * config.n_shared_experts,
        )
    raise WorkloadError(f"no MoE blocks in model_type {config.model_type!r}")


def _moe_forward(module: nn.Module, ops: Any, dims: MoeDims, hidden_states: torch.Tensor) -> torch.Tensor:
    """A transformers MoE block through the backend's `moe` op (weights are views: no copies per call)."""
    from models.hf_moe import contract_inputs

    shape = hidden_states.shape
    w = contract_inputs(module)
    shared = (w["shared_w_gate"], w["shared_w_up"], w["shared_w_down"]) if "shared_w_gate" in w else None
    out = ops.moe(
        hidden_states.reshape(-1, shape[-1]),
        w["router_w"],
        w["w_gate"],
        w["w_up"],
        w["w_down"],
        top_k=dims.top_k,
        scheme=dims.scheme,
        bias=w.get("bias"),
        n_group=dims.n_group,
        topk_group=dims.topk_group,
        scaling=dims.scaling,
        renormalize=dims.renormalize,
        shared=shared,
        shared_gate=w.get("shared_gate"),
    )
    return out.reshape(shape)


def bind(model: nn.Module, ops: Any) -> nn.Module:
    """Route the model's attention, rope, RMSNorm and MoE blocks through `ops` (a backend, or harness.ops)."""
    dims = None
    for module in model.modules():
        kind = type(module).__name__
        if _is_rms_norm(module):
            module.forward = functools.partial(_rms_norm_forward, module, ops)
        elif kind.endswith("Attention") and hasattr(module, "kv_a_proj_with_mqa"):
            module.forward = functools.partial(_mla_attention_forward, module, ops)
        elif kind.endswith("Attention") and hasattr(module, "q_proj"):
            module.forward = functools.partial(_llama_attention_forward, module, ops)
        elif hasattr(module, "experts") and hasattr(module, "gate"):
            dims = dims or moe_dims(model.config)
            module.forward = functools.partial(_moe_forward, module, ops, dims)
    return model


@dataclass(eq=False)
class LlmModel:
    """The float64 master of a workload model, and its bound copies per backend, dtype and device."""

    master: nn.Module
    dtype: torch.dtype
    name: str
    _copies: dict[tuple[str, str], nn.Module] = field(default_factory=dict, repr=False)

    @property
    def config(self) -> Any:
        return self.master.config

    def reference(self) -> nn.Module:
        """The master bound to the float64 oracle (harness.ops): the reference."""
        return self._copy("reference", oracle, torch.float64, "cpu")

    def for_backend(self, backend: Any) -> nn.Module:
        return self._copy(backend.name, backend, self.dtype, backend.device)

    def run(self, backend: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        """What a torch backend's `causal_lm` does: its bound copy, or that copy's logits."""
        bound = self.for_backend(backend)
        return bound if return_model else forward(bound, input_ids, cache)

    def reference_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return forward(self.reference(), input_ids.to("cpu"))

    def _copy(self, key: str, ops: Any, dtype: torch.dtype, device: str) -> nn.Module:
        if (key, device) not in self._copies:
            copied = copy.deepcopy(self.master).to(device=device, dtype=dtype)
            prepare = getattr(ops, "prepare_llm", None)
            if prepare is not None:
                prepare(copied)
            self._copies[(key, device)] = bind(copied, ops)
        return self._copies[(key, device)]


def forward(model: nn.Module, input_ids: torch.Tensor, cache: Any = None) -> torch.Tensor:
    """Logits [B, S, V] of one forward; with a transformers Cache, appends to it (KV-cache decode)."""
    with torch.no_grad():
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=cache is not None)
    return out.logits


def new_cache(model: nn.Module) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def greedy_decode(
    run: Callable[[torch.Tensor, Any], torch.Tensor], cache: Any, prompt: torch.Tensor, steps: int
) -> torch.Tensor:
    """Greedy tokens [B, steps] after `prompt`, one decode step at a time through the KV cache."""
    logits = run(prompt, cache)
    tokens = [logits[:, -1].argmax(dim=-1)]
    for _ in range(steps - 1):
        logits = run(tokens[-1][:, None], cache)
        tokens.append(logits[:, -1].argmax(dim=-1))
    return torch.stack(tokens, dim=1)


# ----- layer-wise capture and replay -----

OpName = str  # "model.layers.2.mlp"


@dataclass
class OpRecord:
    name: OpName
    layer: int
    kind: str  # attention | mlp | moe | norm
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor


def op_modules(model: nn.Module) -> list[tuple[OpName, int, str, nn.Module]]:
    """Each decoder layer's ops in execution order: (name, layer index, kind, module)."""
    found = []
    for i, layer in enumerate(model.model.layers):
        for attr, kind in OP_KINDS.items():
            module = getattr(layer, attr, None)
            if module is None:
                continue
            op_kind = "moe" if kind == "mlp" and hasattr(module, "experts") else kind
            found.append((f"model.layers.{i}.{attr}", i, op_kind, module))
    return found


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def capture(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[OpRecord], list[torch.Tensor]]:
    """One forward recording every op's inputs and output, and every decoder layer's output hidden state."""
    records: list[OpRecord] = []
    layer_out: list[torch.Tensor] = []
    handles = []
    for name, layer, kind, module in op_modules(model):

        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any, _n=name, _l=layer, _k=kind) -> None:
            records.append(OpRecord(_n, _l, _k, args, dict(kwargs), _first_tensor(output).detach()))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    for layer in model.model.layers:
        handles.append(layer.register_forward_hook(lambda m, a, out: layer_out.append(_first_tensor(out).detach())))
    try:
        logits = forward(model, input_ids)
    finally:
        for h in handles:
            h.remove()
    return logits, records, layer_out


def replay(model: nn.Module, record: OpRecord, to: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run the model's own op module `record.name` on the reference's inputs (moved by `to`)."""
    from harness.runner import map_tensors

    module = model.get_submodule(record.name)
    args = map_tensors(record.args, to)
    kwargs = map_tensors({k: v for k, v in record.kwargs.items() if k != "past_key_values"}, to)
    with torch.no_grad():
        return _first_tensor(module(*args, **kwargs))


SUMMARY: Mapping[str, str] = {
    "llama3": "Llama-3 architecture: dense, GQA, half-style rope",
    "qwen3": "Qwen3: dense, GQA, per-head QK RMSNorm",
    "qwen3-moe": "Qwen3-MoE: QK-norm attention, softmax top-k MoE (renormalized) through the backend's moe op",
    "mixtral": "Mixtral: GQA attention, softmax top-2 MoE through the backend's moe op",
    "deepseek-v3": "DeepSeek-V3: MLA (D != Dv, latent KV cache, interleaved rope), grouped sigmoid routing with a "
    "selection bias and a shared expert",
}


# ----- the workloads -----


@dataclass(frozen=True)
class LlmShape:
    arch: str
    size: str  # tiny | small | checkpoint
    batch: int
    seq: int
    new_tokens: int  # greedy decode length
    checkpoint: str | None = None  # a user's --model directory

    def describe(self) -> str:
        source = f"checkpoint {self.checkpoint}" if self.checkpoint else f"{self.arch} {self.size}"
        return f"{source} B{self.batch} S{self.seq} +{self.new_tokens} greedy"


def _linear_params(model: nn.Module) -> tuple[float, float]:
    """(parameters a token multiplies through, all parameters) of the decoder layers and the LM head."""
    active = total = 0.0
    config = model.config
    for name, p in model.named_parameters():
        if "embed_tokens" in name or p.dim() < 2:
            continue
        n = float(p.numel())
        total += n
        if ".experts." in name:
            experts = p.shape[0]
            n *= config.num_experts_per_tok / experts
        active += n
    return active, total


@functools.lru_cache(maxsize=32)
def _param_counts(shape: LlmShape) -> tuple[float, float]:
    """(active, total) parameters of the decoder and head, from a weightless (meta-device) build."""
    if shape.checkpoint:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(shape.checkpoint, local_files_only=True)
    else:
        config = build_config(shape.arch, shape.size)
    with torch.device("meta"):
        model = _causal_lm_class(config)(_prepare(config))
    return _linear_params(model)


class LlmWorkload(Workload):
    """One architecture: judged on logits, greedy decode with a KV cache, perplexity; optionally layer-wise."""

    op: ClassVar[str] = "causal_lm"
    distributions: ClassVar[tuple[str, ...]] = ("normal",)

    def __init__(self, arch: str, presets: Mapping[str, Mapping[str, LlmShape]], description: str) -> None:
        super().__init__(f"llm.{arch}", presets, description)
        self.arch = arch

    # -- inputs --
    def master(self, shape: LlmShape, seed: int) -> nn.Module:
        if shape.checkpoint:
            return load_checkpoint(Path(shape.checkpoint))
        return seeded_model(build_config(shape.arch, shape.size), seed)

    def make_inputs(self, shape: LlmShape, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, Any]:
        try:
            import transformers  # noqa: F401
        except ImportError as exc:
            raise WorkloadUnavailableError(
                f"{self.name} needs transformers (pip install 'harness[llm]'): {exc}"
            ) from None
        master = self.master(shape, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(0, master.config.vocab_size, (shape.batch, shape.seq), generator=gen)
        return {"model": LlmModel(master, dtype, self.name), "input_ids": ids}

    def split_args(self, inputs: Mapping[str, Any], shape: LlmShape) -> tuple[list[Any], dict[str, Any]]:
        return [], {"model": inputs["model"], "input_ids": inputs["input_ids"]}

    def op_kwargs(self, shape: LlmShape) -> dict[str, Any]:
        return {}

    def reference(self, inputs: Mapping[str, Any], shape: LlmShape) -> torch.Tensor:
        return oracle.causal_lm(inputs["model"], inputs["input_ids"])

    def reduction_length(self, shape: LlmShape) -> int:
        return 64 if shape.size == "tiny" else 256

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: LlmShape) -> LlmShape:
        self.check_input_names(tensors)
        ids = tensors["input_ids"]
        if ids.dim() != 2 or ids.is_floating_point():
            raise WorkloadError(
                f"{self.name}: input input_ids: expected integer [B, S], got {ids.dtype} {list(ids.shape)}"
            )
        return LlmShape(
            template.arch, template.size, ids.shape[0], ids.shape[1], template.new_tokens, template.checkpoint
        )

    def checkpoint_shape(self, shape: LlmShape, path: str) -> LlmShape | None:
        """A --model directory of this workload's architecture (validated by loading it once)."""
        config_file = Path(path) / "config.json"
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except FileNotFoundError:
            raise ModelLoadError(
                f"--model {path}: {config_file} is missing (expected config.json + *.safetensors)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"--model {path}: {config_file} cannot be read: {exc}") from None
        if MODEL_TYPES.get(model_type) != self.arch:
            return None
        load_checkpoint(Path(path))
        return dataclasses.replace(shape, size="checkpoint", checkpoint=str(path))

    # -- work counts --
    def flops(self, shape: LlmShape) -> float:
        active, _ = _param_counts(shape)
        return 2.0 * shape.batch * shape.seq * active

    def bytes_moved(self, shape: LlmShape, itemsize: int) -> float:
        _, total = _param_counts(shape)
        return total * itemsize

    def tokens_per_call(self, shape: LlmShape) -> int | None:
        return shape.batch * shape.seq

    def timing_variants(self, device_call: Any, group: CaseInputs) -> dict[str, TimingVariant]:
        """Decode: one token per sequence through a KV cache holding the prompt (cropped back each call)."""
        shape, model = group.shape, group.inputs["model"]
        try:
            cache = new_cache(device_call(return_model=True))
        except NotImplementedError:  # a backend without a torch model (an exported graph) fills a cache too
            cache = new_cache(model.master)
        prompt = group.inputs["input_ids"]
        logits = device_call(input_ids=prompt, cache=cache)
        step = logits[:, -1].argmax(dim=-1)[:, None]
        length = prompt.shape[1]

        def decode() -> Any:
            extra = cache.get_seq_length() - length
            if extra > 0:
                cache.crop(-extra)  # back to the prompt, so every timed step sees the same cache length
            return device_call(input_ids=step, cache=cache)

        active, total = _param_counts(shape)
        itemsize = model.dtype.itemsize
        return {"decode": TimingVariant(decode, 2.0 * shape.batch * active, total * itemsize, shape.batch)}

    # -- judgement --
    def evaluate(self, call: Call, group: CaseInputs, budget: parity.Budget) -> Evaluation:
        inputs, shape, dtype = group.inputs, group.shape, group.dtype
        ids = inputs["input_ids"]
        out = evaluate_tensor(call(), group.reference(), dtype, budget)
        if out.metrics is None:
            return out
        llm = parity.llm_metrics(out.output, group.reference(), ids)
        failures = parity.judge_llm(llm, parity.LLM_BUDGETS[dtype])
        details: dict[str, Any] = {"llm": llm.to_record()}
        # Greedy decode through the KV cache, from the first half of the stream.
        prompt = ids[:, : max(1, shape.seq // 2)]
        model = inputs["model"]
        ref_tokens = group.cached(
            "greedy",
            lambda: greedy_decode(
                lambda t, c: forward(model.reference(), t, c), new_cache(model.reference()), prompt, shape.new_tokens
            ),
        )
        cache = new_cache(model.master)
        tokens = greedy_decode(lambda t, c: call(input_ids=t, cache=c), cache, prompt, shape.new_tokens)
        lengths = parity.agreement_length(tokens, ref_tokens)
        details["greedy"] = {"new_tokens": shape.new_tokens, "agreement_length": lengths, "min": min(lengths)}
        if group.layerwise:
            try:
                bound = call(return_model=True)
            except NotImplementedError as exc:
                details["layerwise"] = {"unavailable": str(exc)}
                return Evaluation(out.output, out.metrics, "logits.", failures, details, judge_primary=False)
            loc = self.localize(bound, group)
            details["layerwise"] = loc.to_record()
            if loc.culprit is not None:
                c = loc.culprit
                failures += (parity.Failure(f"layerwise.layer{c.layer}.{c.kind}", c.median_row_rel_l2, c.budget),)
        return Evaluation(out.output, out.metrics, "logits.", failures, details, judge_primary=False)

    def budget(self, dtype: str, shape: LlmShape, overrides: Mapping[str, float] | None = None) -> parity.Budget:
        """For --against ratios on the logits (absolute verdicts use LLM_BUDGETS): scaled to the LLM budget."""
        limit = parity.LLM_BUDGETS[dtype].median_position_rel_l2
        base = parity.Budget(rel_l2=limit, worst_row_rel_l2=4 * limit, atol=limit, rtol=limit, max_outside=0.05)
        return dataclasses.replace(base, **dict(overrides or {}))

    def localize(self, bound: nn.Module, group: CaseInputs) -> parity.Localization:
        """Propagated: each model on its own inputs, layer outputs compared. Teacher-forced: each of the
        backend's ops fed the reference's own inputs, its output compared with the reference's."""
        ids = group.inputs["input_ids"]
        model = group.inputs["model"]
        _, ref_ops, ref_layers = group.cached("capture", lambda: capture(model.reference(), ids))
        device = next(bound.parameters()).device
        dtype = model.dtype
        _, _, out_layers = capture(bound, ids.to(device))
        propagated = [parity.median_row_rel_l2(o, r) for o, r in zip(out_layers, ref_layers, strict=True)]

        def to(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

        budget = parity.budget_for(group.dtype, self.reduction_length(group.shape))
        errors = [parity.op_error(r.name, r.layer, r.kind, replay(bound, r, to), r.output, budget) for r in ref_ops]
        return parity.localize(propagated, errors, budget.worst_row_rel_l2)


SIZES = {"tiny": dict(batch=2, seq=32, new_tokens=8), "small": dict(batch=4, seq=128, new_tokens=16)}


def workloads() -> list[Workload]:
    """The built-in LLM workloads (the `harness.workloads` entry point)."""
    return [
        LlmWorkload(
            arch,
            {size: {arch: LlmShape(arch, size, **dims)} for size, dims in SIZES.items()},
            SUMMARY[arch],
        )
        for arch in ARCHS
    ]
