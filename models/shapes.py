"""Dimensions of real models, in one place, for the `real` presets of every workload family."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionDims:
    """Per-layer attention geometry: query heads, kv heads, qk head dim, v head dim, softmax scale."""

    hq: int
    hkv: int
    d: int
    dv: int
    scale: float | None = None  # None = 1/sqrt(d)


ATTENTION_MODELS: dict[str, AttentionDims] = {
    # Llama-3-8B: 32 query heads sharing 8 kv heads (GQA 4:1), head dim 128.
    "llama3-8b": AttentionDims(hq=32, hkv=8, d=128, dv=128),
    # Qwen3-32B: 64 query heads, 8 kv heads (GQA 8:1), head dim 128.
    "qwen3-32b": AttentionDims(hq=64, hkv=8, d=128, dv=128),
    # DeepSeek-V3 MLA in its absorbed (decode) form: one shared latent kv head (MQA), qk dim 512 + 64 rope = 576,
    # v dim 512 (D != Dv), softmax scale from the unabsorbed qk head dim 192.
    "deepseek-v3-mla": AttentionDims(hq=128, hkv=1, d=576, dv=512, scale=192**-0.5),
}
