"""Dimensions of real models, in one place, for the `real` presets of every workload family."""

from __future__ import annotations

from dataclasses import dataclass

from harness.op_types import RoutingSpec


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


@dataclass(frozen=True)
class MoeDims:
    """A MoE layer's geometry and routing rule (`spec`: the RoutingSpec that `route` / `moe` take)."""

    h: int  # hidden size
    f: int  # expert intermediate size
    e: int  # routed experts
    top_k: int
    scheme: str  # softmax_topk | sigmoid_group_topk
    renormalize: bool
    n_group: int = 1
    topk_group: int = 1
    scaling: float = 1.0
    bias: bool = False  # a selection-only correction bias (DeepSeek-V3's e_score_correction_bias)
    shared_f: int = 0  # shared expert intermediate size; 0 = none
    shared_gate: bool = False  # sigmoid gate on the shared expert (Qwen2-MoE)

    @property
    def spec(self) -> RoutingSpec:
        return RoutingSpec(
            top_k=self.top_k,
            scheme=self.scheme,
            n_group=self.n_group,
            topk_group=self.topk_group,
            scaling=self.scaling,
            renormalize=self.renormalize,
        )


MOE_MODELS: dict[str, MoeDims] = {
    # Mixtral-8x7B: 8 experts, top-2, softmax then renormalized over the two.
    "mixtral": MoeDims(h=4096, f=14336, e=8, top_k=2, scheme="softmax_topk", renormalize=True),
    # Qwen3-30B-A3B: 128 fine-grained experts, top-8, norm_topk_prob=True.
    "qwen3-moe": MoeDims(h=2048, f=768, e=128, top_k=8, scheme="softmax_topk", renormalize=True),
    # Qwen1.5-MoE-A2.7B (Qwen2-MoE): 60 experts, top-4, not renormalized, a sigmoid-gated shared expert.
    "qwen2-moe": MoeDims(
        h=2048, f=1408, e=60, top_k=4, scheme="softmax_topk", renormalize=False, shared_f=5632, shared_gate=True
    ),
    # DeepSeek-V3: 256 experts in 8 groups, keep 4 groups, top-8; sigmoid scores with a selection-only bias,
    # renormalized, times routed_scaling_factor 2.5; one always-on shared expert.
    "deepseek-v3": MoeDims(
        h=7168,
        f=2048,
        e=256,
        top_k=8,
        scheme="sigmoid_group_topk",
        renormalize=True,
        n_group=8,
        topk_group=4,
        scaling=2.5,
        bias=True,
        shared_f=2048,
    ),
}


@dataclass(frozen=True)
class AttentionShape:
    """One attention call's geometry and mask settings."""

    b: int
    hq: int
    hkv: int
    sq: int
    skv: int
    d: int
    dv: int
    causal: bool = True
    window: int | None = None
    kv_lens: tuple[int, ...] | None = None
    scale: float | None = None

    def describe(self) -> str:
        text = f"B{self.b} H{self.hq}/{self.hkv} Sq{self.sq} Skv{self.skv} D{self.d}"
        text += f"/{self.dv}" if self.dv != self.d else ""
        text += f" w{self.window}" if self.window else ""
        text += f" lens{list(self.kv_lens)}" if self.kv_lens else ""
        return text

    def lens(self) -> list[int]:
        return list(self.kv_lens) if self.kv_lens is not None else [self.skv] * self.b
