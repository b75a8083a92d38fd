"""The default tensor-parallel decoder (`Backend.llm_tp`): a pre-norm decoder stack (RMSNorm, rotary attention,
SwiGLU MLP, final norm, LM head) split Megatron-style across the ranks of a process group, built from the
backend's own `rms_norm` / `rope` / `attention` / `swiglu` ops, plain matmuls in the case dtype and collectives.

Column-parallel q/k/v and gate/up projections: each rank holds the rows of its kv heads (whole GQA groups,
`even_bounds` over the kv heads as in harness/tensor_parallel.py) and of its slice of the MLP width. Row-parallel
o and down projections: each rank multiplies its columns and the partial sums are all_reduced (in float32).
Vocab-parallel logits: each rank computes its slice of the vocabulary and the slices are all_gathered (padded
to the longest). The embedding is replicated. Every rank ends with the whole [B, S, V] logits.

Steps are methods so a fault plugin (or a different, correct collective) changes exactly one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.expert_parallel import even_bounds
from harness.lazy import torch


@dataclass(frozen=True)
class DecoderSpec:
    """What the weights alone do not say: head counts, the norm epsilon and the rotary base."""

    heads: int
    kv_heads: int
    eps: float = 1e-6
    rope_theta: float = 10000.0

    def head_dim(self, w_q: torch.Tensor) -> int:
        return w_q.shape[-2] // self.heads


@dataclass(frozen=True)
class DecoderWeights:
    """A decoder's weights in nn.Linear layout, layers stacked on dim 0 (L layers, H hidden, V vocab, F MLP
    width, Hq / Hkv heads of D): embed / lm_head [V, H], attn_norm / mlp_norm [L, H], w_q [L, Hq*D, H], w_k /
    w_v [L, Hkv*D, H], w_o [L, H, Hq*D], w_gate / w_up [L, F, H], w_down [L, H, F], final_norm [H]."""

    embed: torch.Tensor
    attn_norm: torch.Tensor
    w_q: torch.Tensor
    w_k: torch.Tensor
    w_v: torch.Tensor
    w_o: torch.Tensor
    mlp_norm: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor
    final_norm: torch.Tensor
    lm_head: torch.Tensor


def rope_tables(seq: int, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-style rotary cos / sin [S, D] in float64 for positions 0..seq-1 (transformers' Llama convention)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # [D/2]
    freqs = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None]  # [S, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [S, D]
    return emb.cos(), emb.sin()


@dataclass(frozen=True)
class _Share:
    """This rank's slices: kv heads [kv0, kv1), query heads [q0, q1), MLP columns [f0, f1), vocab [v0, v1)."""

    kv0: int
    kv1: int
    q0: int
    q1: int
    f0: int
    f1: int
    vocab: list[int]


class TensorParallelDecoder:
    """One tensor-parallel decoder call on a process group."""

    def reduce(self, partial: torch.Tensor, group: Any, where: str) -> torch.Tensor:
        """The sum over the ranks of a row-parallel projection's partial result (`where`: "o_proj" or
        "down_proj"), all_reduced in float32, returned in the partial's dtype."""
        import torch.distributed as dist

        total = partial.float()
        dist.all_reduce(total, group=group)
        return total.to(partial.dtype)

    def gather_vocab(self, piece: torch.Tensor, group: Any, vocab: list[int]) -> torch.Tensor:
        """Every rank's logits slice [B, S, V_r] concatenated in rank order on the last dim: [B, S, V]."""
        import torch.distributed as dist

        sizes = [vocab[r + 1] - vocab[r] for r in range(len(vocab) - 1)]
        padded = piece.new_zeros((*piece.shape[:-1], max(sizes)))
        padded[..., : piece.shape[-1]] = piece
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        return torch.cat([p[..., :n] for p, n in zip(pieces, sizes, strict=True)], dim=-1)

    def share(self, spec: DecoderSpec, w: DecoderWeights, rank: int, world: int) -> _Share:
        g = spec.heads // spec.kv_heads  # query heads per kv head: a GQA group stays on one rank
        kv = even_bounds(spec.kv_heads, world)
        f = even_bounds(w.w_gate.shape[1], world)
        return _Share(kv[rank], kv[rank + 1], kv[rank] * g, kv[rank + 1] * g, f[rank], f[rank + 1],
                      even_bounds(w.lm_head.shape[0], world))  # fmt: skip

    def attention(self, backend: Any, x: torch.Tensor, w: DecoderWeights, layer: int, ctx: dict[str, Any]) -> Any:
        """This rank's heads of one attention block: the partial o_proj output [B, S, H] (before the reduce)."""
        s: _Share = ctx["share"]
        B, S, H = x.shape
        D = ctx["d"]
        if s.q1 == s.q0:  # more ranks than kv heads: this rank holds none and adds nothing
            return x.new_zeros((B, S, H))
        q = x @ w.w_q[layer, s.q0 * D : s.q1 * D].T  # [B, S, Hq_r*D] column-parallel
        k = x @ w.w_k[layer, s.kv0 * D : s.kv1 * D].T  # [B, S, Hkv_r*D]
        v = x @ w.w_v[layer, s.kv0 * D : s.kv1 * D].T
        q, k, v = (t.view(B, S, -1, D).transpose(1, 2) for t in (q, k, v))  # [B, heads, S, D]
        cos, sin = ctx["cos"], ctx["sin"]  # [S, D]
        q, k = backend.rope(q.contiguous(), cos, sin), backend.rope(k.contiguous(), cos, sin)
        o = backend.attention(q.to(x.dtype), k.to(x.dtype), v.contiguous(), causal=True)  # [B, Hq_r, S, D]
        o = o.to(x.dtype).transpose(1, 2).reshape(B, S, -1)  # [B, S, Hq_r*D]
        return o @ w.w_o[layer, :, s.q0 * D : s.q1 * D].T  # [B, S, H] row-parallel partial

    def mlp(self, backend: Any, x: torch.Tensor, w: DecoderWeights, layer: int, ctx: dict[str, Any]) -> Any:
        """This rank's MLP columns: the partial down_proj output [B, S, H] (before the reduce)."""
        s: _Share = ctx["share"]
        if s.f1 == s.f0:
            return x.new_zeros(x.shape)
        gate = x @ w.w_gate[layer, s.f0 : s.f1].T  # [B, S, F_r] column-parallel
        up = x @ w.w_up[layer, s.f0 : s.f1].T
        act = backend.swiglu(torch.cat((gate, up), dim=-1)).to(x.dtype)  # [B, S, F_r]
        return act @ w.w_down[layer, :, s.f0 : s.f1].T  # [B, S, H] row-parallel partial

    def run(self, backend: Any, input_ids: torch.Tensor, w: DecoderWeights, spec: DecoderSpec, group: Any) -> Any:
        """input_ids [B, S] -> logits [B, S, V] in the weights' dtype, identical on every rank."""
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        share = self.share(spec, w, rank, world)
        D = spec.head_dim(w.w_q)
        cos, sin = rope_tables(input_ids.shape[1], D, spec.rope_theta)
        dtype, device = w.embed.dtype, w.embed.device
        ctx = {"share": share, "d": D, "cos": cos.to(device, dtype), "sin": sin.to(device, dtype)}
        h = w.embed[input_ids]  # [B, S, H] replicated embedding
        for layer in range(w.attn_norm.shape[0]):
            x = backend.rms_norm(h, w.attn_norm[layer], spec.eps).to(dtype)
            h = h + self.reduce(self.attention(backend, x, w, layer, ctx), group, "o_proj")
            x = backend.rms_norm(h, w.mlp_norm[layer], spec.eps).to(dtype)
            h = h + self.reduce(self.mlp(backend, x, w, layer, ctx), group, "down_proj")
        x = backend.rms_norm(h, w.final_norm, spec.eps).to(dtype)
        v0, v1 = share.vocab[rank], share.vocab[rank + 1]
        return self.gather_vocab((x @ w.lm_head[v0:v1].T).contiguous(), group, share.vocab)  # [B, S, V]
