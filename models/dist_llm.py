"""`dist.llm_tp`: a tiny Llama-like decoder (embedding, RMSNorm, rope attention with GQA, SwiGLU MLP, final norm,
LM head) tensor-parallel across the ranks of a torchrun job (harness/tensor_parallel_lm.py: column-parallel
q/k/v/gate/up, row-parallel o/down with an all_reduce, vocab-parallel logits all_gathered), judged on its logits
against the float64 single-device forward of the same weights unsharded (written here from harness.ops alone).

Geometry and weights follow the llm.llama3 presets (models/llm_config.py: the same hidden size, layers, heads,
vocab, and seeded_model's scaling so the logits are confident), without transformers. Tiny and small shapes run
on any number of ranks; the real shape (Llama-3-8B's layer geometry, two layers) is meant for 8 ranks and skips
on another world size, naming the one it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from harness import ops, parity, parity_llm
from harness.lazy import torch
from harness.models.dist_moe import check_world
from harness.models.llm_config import _common
from harness.names import OPS
from harness.tensor_parallel_lm import DecoderSpec, DecoderWeights, rope_tables
from harness.workload import Workload, WorkloadError, generator

LM_HEAD_SCALE = 4.0  # as seeded_model: confident logits, so a wrong sum shows as a changed top-1


@dataclass(frozen=True)
class DecoderDims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class DistLlmShape:
    dims: DecoderDims
    batch: int
    seq: int
    world: int = 0  # the number of ranks the shape is meant for; 0: any

    def describe(self) -> str:
        d = self.dims
        tp = f" tp{self.world}" if self.world else ""
        return f"L{d.layers} H{d.hidden} heads {d.heads}:{d.kv_heads} F{d.ffn} V{d.vocab} B{self.batch} S{self.seq}{tp}"


def llama3_dims(size: str) -> DecoderDims:
    """The llm.llama3 preset's geometry (models/llm_config.py: build_config("llama3", size))."""
    c = _common(size, vocab=256 if size == "tiny" else 1024)
    h = c["hidden_size"]
    return DecoderDims(
        c["num_hidden_layers"], h, c["num_attention_heads"], c["num_key_value_heads"], 2 * h, c["vocab_size"]
    )


def _weights(shape: DistLlmShape, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """seeded_model's scheme: linear weights N(0, 1/fan_in), embeddings N(0, 1), norm gains 1 + N(0, 0.1^2),
    the LM head 4x; ids uniform over the vocabulary."""
    d = shape.dims
    L, H, D, F, V = d.layers, d.hidden, d.head_dim, d.ffn, d.vocab

    def randn(name: str, dims: tuple[int, ...], scale: float) -> torch.Tensor:
        return (torch.randn(dims, generator=generator(seed, name), dtype=torch.float32) * scale).to(dtype)

    def gain(name: str, dims: tuple[int, ...]) -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(dims, generator=generator(seed, name), dtype=torch.float32)).to(dtype)

    ids = torch.randint(0, V, (shape.batch, shape.seq), generator=generator(seed, "input_ids"), dtype=torch.int64)
    return {
        "input_ids": ids,
        "embed": randn("embed", (V, H), 1.0),
        "attn_norm": gain("attn_norm", (L, H)),
        "w_q": randn("w_q", (L, d.heads * D, H), H**-0.5),
        "w_k": randn("w_k", (L, d.kv_heads * D, H), H**-0.5),
        "w_v": randn("w_v", (L, d.kv_heads * D, H), H**-0.5),
        "w_o": randn("w_o", (L, H, d.heads * D), (d.heads * D) ** -0.5),
        "mlp_norm": gain("mlp_norm", (L, H)),
        "w_gate": randn("w_gate", (L, F, H), H**-0.5),
        "w_up": randn("w_up", (L, F, H), H**-0.5),
        "w_down": randn("w_down", (L, H, F), F**-0.5),
        "final_norm": gain("final_norm", (H,)),
        "lm_head": randn("lm_head", (V, H), LM_HEAD_SCALE * H**-0.5),
    }


def reference_logits(input_ids: torch.Tensor, w: DecoderWeights, spec: DecoderSpec) -> torch.Tensor:
    """The whole model on one device in float64 from harness.ops: input_ids [B, S] -> logits [B, S, V]."""
    w = DecoderWeights(*(t.double() for t in dataclasses.astuple(w)))
    B, S = input_ids.shape
    D = spec.head_dim(w.w_q)
    cos, sin = rope_tables(S, D, spec.rope_theta)  # [S, D]
    h = w.embed[input_ids]  # [B, S, H]
    for layer in range(w.attn_norm.shape[0]):
        x = ops.rms_norm(h, w.attn_norm[layer], spec.eps)
        q = (x @ w.w_q[layer].T).view(B, S, spec.heads, D).transpose(1, 2)  # [B, Hq, S, D]
        k = (x @ w.w_k[layer].T).view(B, S, spec.kv_heads, D).transpose(1, 2)  # [B, Hkv, S, D]
        v = (x @ w.w_v[layer].T).view(B, S, spec.kv_heads, D).transpose(1, 2)
        o = ops.attention(ops.rope(q, cos, sin), ops.rope(k, cos, sin), v, causal=True)  # [B, Hq, S, D]
        h = h + o.transpose(1, 2).reshape(B, S, -1) @ w.w_o[layer].T
        x = ops.rms_norm(h, w.mlp_norm[layer], spec.eps)
        act = ops.swiglu(torch.cat((x @ w.w_gate[layer].T, x @ w.w_up[layer].T), dim=-1))  # [B, S, F]
        h = h + act @ w.w_down[layer].T
    return ops.rms_norm(h, w.final_norm, spec.eps) @ w.lm_head.T  # [B, S, V]


class DistLlm(Workload):
    """The decoder's prefill logits, tensor-parallel over the ranks."""

    op: ClassVar[str] = "llm_tp"
    collective: ClassVar[bool] = True
    distributions: ClassVar[tuple[str, ...]] = ("normal",)

    def make_inputs(
        self, shape: DistLlmShape, dtype: torch.dtype, seed: int, distribution: str
    ) -> dict[str, torch.Tensor]:
        check_world(f"{self.name} shape {shape.describe()}", shape.world)  # before generating real-size weights
        return _weights(shape, dtype, seed)

    def op_kwargs(self, shape: DistLlmShape) -> dict[str, Any]:
        d = shape.dims
        return {"heads": d.heads, "kv_heads": d.kv_heads, "eps": d.eps, "rope_theta": d.rope_theta}

    def reference(self, inputs: Mapping[str, torch.Tensor], shape: DistLlmShape) -> torch.Tensor:
        args, kw = self.split_args(inputs, shape)
        spec = DecoderSpec(kw["heads"], kw["kv_heads"], kw["eps"], kw["rope_theta"])
        return reference_logits(args[0], DecoderWeights(*args[1:]), spec)

    def flops(self, shape: DistLlmShape) -> float:
        d, tokens = shape.dims, shape.batch * shape.seq
        per_layer = d.hidden * d.head_dim * (2 * d.heads + 2 * d.kv_heads) + 3 * d.hidden * d.ffn
        attention = 2 * d.heads * d.head_dim * shape.batch * shape.seq * (shape.seq + 1) / 2  # causal QK^T and PV
        return 2.0 * tokens * (d.layers * per_layer + d.hidden * d.vocab) + d.layers * 2 * attention

    def bytes_moved(self, shape: DistLlmShape, itemsize: int) -> float:
        d = shape.dims
        per_layer = d.hidden * d.head_dim * (2 * d.heads + 2 * d.kv_heads) + 3 * d.hidden * d.ffn
        logits = shape.batch * shape.seq * d.vocab
        return float((d.layers * per_layer + 2 * d.hidden * d.vocab + logits) * itemsize)

    def reduction_length(self, shape: DistLlmShape) -> int:
        return max(shape.dims.hidden, shape.dims.ffn)

    def budget(self, dtype: str, shape: Any, overrides: Mapping[str, float] | None = None) -> parity.Budget:
        """The llm.* logits budget (parity_llm.LLM_BUDGETS): errors compound through the layers."""
        limit = parity_llm.LLM_BUDGETS[dtype].median_position_rel_l2
        base = parity.Budget(rel_l2=limit, worst_row_rel_l2=4 * limit, atol=limit, rtol=limit, max_outside=0.05)
        return dataclasses.replace(base, **dict(overrides or {}))

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: DistLlmShape) -> DistLlmShape:
        self.check_user_tensors(tensors)
        ids, w_q, w_gate = tensors["input_ids"], tensors["w_q"], tensors["w_gate"]
        L, H = tensors["attn_norm"].shape
        d = template.dims
        if w_q.shape[1] % d.heads or tensors["w_k"].shape[1] * d.heads != w_q.shape[1] * d.kv_heads:
            raise WorkloadError(
                f"{self.name}: inputs w_q / w_k: {list(w_q.shape)} / {list(tensors['w_k'].shape)} do not hold "
                f"{d.heads} query and {d.kv_heads} kv heads of one size"
            )
        for name, spec_layout in OPS[self.op].layouts.items():
            if name not in ("input_ids", "final_norm") and tensors[name].shape[0] != L and spec_layout[0] == "L":
                raise WorkloadError(f"{self.name}: input {name}: expected {L} layers, got {list(tensors[name].shape)}")
        dims = dataclasses.replace(
            d, layers=L, hidden=H, ffn=w_gate.shape[1], vocab=tensors["lm_head"].shape[0], heads=d.heads
        )
        return dataclasses.replace(template, dims=dims, batch=ids.shape[0], seq=ids.shape[1])


def _presets() -> dict[str, dict[str, DistLlmShape]]:
    # "uneven": heads 6:3, F 100, V 203, so two ranks get unequal kv heads and vocab slices (the padded gather).
    uneven = DecoderDims(layers=2, hidden=48, heads=6, kv_heads=3, ffn=100, vocab=203)
    llama3_8b_l2 = DecoderDims(layers=2, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256, rope_theta=5e5)
    return {
        "tiny": {"llama3": DistLlmShape(llama3_dims("tiny"), 2, 16), "uneven": DistLlmShape(uneven, 2, 12)},
        "small": {"llama3": DistLlmShape(llama3_dims("small"), 2, 128)},
        "real": {"llama3-8b-l2-tp8": DistLlmShape(llama3_8b_l2, 1, 2048, world=8)},
    }


def workloads() -> list[Workload]:
    return [
        DistLlm(
            "dist.llm_tp",
            _presets(),
            "a Llama-like decoder tensor-parallel over the ranks (column/row-parallel projections with all_reduce, "
            "vocab-parallel logits); judged on its logits",
        )
    ]
