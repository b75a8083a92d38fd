"""LLM workload models: transformers configs for the presets, seeded float64 weights, users' checkpoints.

The harness never downloads weights: a preset builds a real transformers architecture with seeded weights
scaled so the logits are confident, and `--model DIR` loads a checkpoint directory the user has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.lazy import nn, torch
from harness.models.shapes import MoeDims
from harness.workload import WorkloadError

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


def causal_lm_class(config: Any) -> type[nn.Module]:
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


def prepare_config(config: Any) -> Any:
    config._attn_implementation = "sdpa"  # the mask it builds is ignored: the bound attention is causal itself
    config._experts_implementation = "eager"  # runs in float64 (grouped_mm does not); replaced by backend.moe
    return config


def seeded_model(config: Any, seed: int) -> nn.Module:
    """A float64 model whose weights give confident, well-separated logits (HF's 0.02 init gives near-uniform
    ones, where every top-1 is a near-tie): linear weights ~ N(0, 1/fan_in), embeddings N(0, 1), norm gains ~ 1,
    router correction biases ~ N(0, 0.1^2), the LM head scaled up 4x."""
    model = causal_lm_class(config)(prepare_config(config)).double().eval()
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


def config_model_type(path: Path) -> str | None:
    """The model_type of a checkpoint directory's config.json; errors name the file and what it must hold."""
    config_file = path / "config.json"
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"--model {path}: {config_file} is missing (expected config.json + *.safetensors)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--model {path}: {config_file} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"--model {path}: {config_file}: expected a JSON object (as save_pretrained writes), got {_json_kind(data)}"
        )
    model_type = data.get("model_type")
    return model_type if isinstance(model_type, str) else None


def _json_kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def check_finite_weights(model: nn.Module, path: Path) -> None:
    """A checkpoint with NaN or infinite weights cannot be judged (every metric would be NaN): name the first
    tensor that holds them and how many, before anything runs."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if not t.is_floating_point():
            continue
        nans, infs = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        if nans or infs:
            counts = ", ".join(f"{n} {what}" for n, what in ((nans, "NaN"), (infs, "Inf")) if n)
            raise ModelLoadError(
                f"--model {path}: the checkpoint holds non-finite weights ({name}: {counts} of {t.numel()}); "
                "every weight must be finite"
            )


def load_checkpoint(path: Path) -> nn.Module:
    """A user's checkpoint directory (config.json + safetensors), in float64; errors name the path."""
    import transformers as tf

    path = Path(path)
    config_file = path / "config.json"
    config_model_type(path)  # a missing file, or JSON that is not an object, named before transformers reads it
    try:
        config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"--model {path}: {config_file} cannot be read: {exc}") from None
    cls = causal_lm_class(config)
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
        model = cls.from_pretrained(
            str(path), config=prepare_config(config), local_files_only=True, dtype=torch.float64
        )
    except Exception as exc:  # transformers raises many types for a bad checkpoint; name the path either way
        raise ModelLoadError(f"--model {path}: loading failed: {type(exc).__name__}: {exc}") from None
    model = model.double().eval()
    check_finite_weights(model, path)
    return model


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
