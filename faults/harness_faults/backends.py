"""Planted faults and correct-but-different implementations: the harness's proof that its checks work.

Each faulty backend reproduces one real porting mistake; each alternative backend computes the right function
in another order. `harness selftest` runs them all through the ordinary runner and fails if a fault slips
through or an alternative is falsely failed; the tests load this file with `--plugin`. Not registered by
default (they would be noise in `harness list`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from harness import ops, paged
from harness.backends.ascend.adapter import AscendSim
from harness.backends.ort_native import OrtCpuGqa, OrtCpuMoe
from harness.backends.torch_cpu import TorchCpu
from harness.models.llm_bind import forward
from harness.ops import visible_keys

# ----- attention -----


class TopLeftCausal(TorchCpu):
    """Causal attention aligned top-left (torch SDPA's is_causal when Sq != Skv): right for prefill, wrong for
    chunked prefill and decode, where query i must see keys j <= i + (L - Sq)."""

    name: ClassVar[str] = "bug-top-left-causal"

    @paged.gathering  # the paged form (paged chunked prefill): gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        B, Hq, Sq, _ = q.shape
        Skv = k.shape[2]
        if kv_lens is None and window is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=Hq != k.shape[1])
        i = torch.arange(Sq).view(1, Sq, 1)
        j = torch.arange(Skv).view(1, 1, Skv)
        lens = kv_lens.view(-1, 1, 1) if kv_lens is not None else torch.full((B, 1, 1), Skv)
        vis = (j < lens) & (j <= i) if causal else (j < lens)  # the bug: no (L - Sq) offset
        if window is not None:
            vis = vis & (j > i - window)
        mask = vis[:, None]  # [B, 1, Sq, Skv]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=Hq != k.shape[1])
        return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)


class WrongGqa(TorchCpu):
    """GQA head mapping h -> h % Hkv (tiled kv heads) instead of h -> h // (Hq / Hkv)."""

    name: ClassVar[str] = "bug-wrong-gqa"

    @paged.gathering  # the paged form: gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        group = q.shape[1] // k.shape[1]
        k_rep = k.repeat(1, group, 1, 1)  # the bug: tile, so query head h reads kv head h % Hkv
        v_rep = v.repeat(1, group, 1, 1)
        return super().attention(q, k_rep, v_rep, causal=causal, window=window, scale=scale, kv_lens=kv_lens)


class NaiveSoftmax(TorchCpu):
    """Softmax without max-subtraction, in the case dtype: overflows in float16 on large scores."""

    name: ClassVar[str] = "bug-naive-softmax"

    @paged.gathering  # the paged form: gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = (q @ k.transpose(-1, -2)) * scale  # [B, Hq, Sq, Skv] in the case dtype
        vis = visible_keys(q.shape[2], k.shape[2], batch=q.shape[0], causal=causal, window=window, kv_lens=kv_lens)
        p = torch.exp(scores).masked_fill(~vis[:, None], 0.0)  # the bug: exp(s) instead of exp(s - max)
        denom = p.sum(-1, keepdim=True)
        return (p @ v) / torch.where(denom > 0, denom, torch.ones_like(denom))


class Zeros(TorchCpu):
    """Attention that returns zeros of the right shape and dtype."""

    name: ClassVar[str] = "bug-zeros"

    @paged.gathering  # the paged form: gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        return torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype)


class DroppedToken(TorchCpu):
    """The last query token of every sequence comes back as zeros."""

    name: ClassVar[str] = "bug-dropped-token"

    @paged.gathering  # the paged form: gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        out = super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
        out = out.clone()
        out[:, :, -1, :] = 0  # the bug
        return out


class WindowOnPrefillOnly(TorchCpu):
    """Applies the sliding window only on the prefill path (Sq == Skv): decode and chunked prefill attend to the
    whole cache, as a port whose decode kernel never got the window argument wired through."""

    name: ClassVar[str] = "bug-window-prefill-only"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        if q.shape[2] != k.shape[2]:
            window = None  # the bug: the decode / chunked path drops the window
        return super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)


BLOCK = 16


class BlockwiseOnline(TorchCpu):
    """Correct, in another order: blockwise online softmax (flash-attention style) over key blocks of 16,
    accumulating in float32, rounding once to the case dtype."""

    name: ClassVar[str] = "blockwise-online"

    @paged.gathering  # the paged form: gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        B, Hq, Sq, D = q.shape
        Skv = k.shape[2]
        group = Hq // k.shape[1]
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        qf = q.float() * scale
        kf = k.float().repeat_interleave(group, dim=1)
        vf = v.float().repeat_interleave(group, dim=1)
        vis = visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens)[:, None]
        running_max = torch.full((B, Hq, Sq, 1), -math.inf)
        running_sum = torch.zeros(B, Hq, Sq, 1)
        acc = torch.zeros(B, Hq, Sq, v.shape[-1])
        for start in range(0, Skv, BLOCK):
            sl = slice(start, start + BLOCK)
            s = (qf @ kf[:, :, sl].transpose(-1, -2)).masked_fill(~vis[..., sl], -math.inf)
            new_max = torch.maximum(running_max, s.amax(-1, keepdim=True))
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            correction = torch.exp(running_max - safe_max)
            p = torch.exp(s - safe_max)
            running_sum = running_sum * correction + p.sum(-1, keepdim=True)
            acc = acc * correction + p @ vf[:, :, sl]
            running_max = new_max
        out = acc / torch.where(running_sum > 0, running_sum, torch.ones_like(running_sum))
        return out.to(q.dtype)


# ----- MoE -----


class _RoutingBug(TorchCpu):
    """Routes with `_routing` (float32), then computes the experts with torch-cpu's own correct code (moe
    routes through `route`, so the bug reaches the layer too)."""

    def _routing(self, logits, spec, bias):
        return ops.route_scores(logits, spec, bias=bias)

    def route(self, logits, spec, *, bias=None):
        chosen = self._routing(logits.float(), spec, None if bias is None else bias.float())
        return ops.Routing(chosen.weights.to(logits.dtype), chosen.ids)


class NotRenormalized(_RoutingBug):
    name: ClassVar[str] = "bug-moe-no-renorm"

    def _routing(self, logits, spec, bias):
        return super()._routing(logits, replace(spec, renormalize=False), bias)  # the bug: flag ignored


class BiasInWeights(_RoutingBug):
    name: ClassVar[str] = "bug-moe-bias-in-weights"

    def _routing(self, logits, spec, bias):
        _, choice, _ = ops.selection_scores(logits, spec, bias=bias)
        ids = ops.stable_topk_ids(choice, spec.top_k)
        weights = choice.gather(1, ids)  # the bug: biased scores as combine weights, not the raw scores
        if spec.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return ops.Routing(weights * spec.scaling, ids)


class IdsOffByOne(_RoutingBug):
    name: ClassVar[str] = "bug-moe-ids-off-by-one"

    def _routing(self, logits, spec, bias):
        chosen = super()._routing(logits, spec, bias)
        return ops.Routing(chosen.weights, (chosen.ids + 1) % logits.shape[1])  # the bug: 1-based ids wrapped


class GroupsByMax(_RoutingBug):
    name: ClassVar[str] = "bug-moe-groups-by-max"

    def _routing(self, logits, spec, bias):
        if spec.scheme != "sigmoid_group_topk" or spec.n_group == 1:
            return super()._routing(logits, spec, bias)
        T, E = logits.shape
        scores = torch.sigmoid(logits)
        choice = scores + bias
        group_scores = choice.view(T, spec.n_group, -1).amax(-1)  # the bug: max instead of the sum of the top two
        keep = group_scores.topk(spec.topk_group, dim=-1).indices
        mask = torch.zeros(T, spec.n_group, dtype=torch.bool).scatter_(1, keep, True)
        mask = mask.repeat_interleave(E // spec.n_group, 1)
        ids = choice.masked_fill(~mask, float("-inf")).topk(spec.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if spec.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return ops.Routing(weights * spec.scaling, ids)


class DroppedMoeToken(TorchCpu):
    name: ClassVar[str] = "bug-moe-dropped-token"

    def experts(self, *args, **kw):
        out = super().experts(*args, **kw).clone()
        out[-1] = 0  # the bug: the last token's output is lost (an off-by-one in a token loop)
        return out


class DenseMoe(TorchCpu):
    """Correct, in another order: every expert runs on every token (dense), weights zero where not routed,
    and the k contributions are summed in float32 in expert order rather than by index_add_."""

    name: ClassVar[str] = "dense-moe"

    def experts(self, x, experts, routing, shared):
        w_gate, w_up, w_down = experts.tensors()
        T, E = x.shape[0], w_gate.shape[0]
        dense = torch.zeros(T, E).scatter_add_(1, routing.ids, routing.weights.float())  # [T, E] combine weights
        out = torch.zeros(T, x.shape[1])
        for e in reversed(range(E)):
            y = (torch.nn.functional.silu(x @ w_gate[e].T) * (x @ w_up[e].T)) @ w_down[e].T  # [T, H]
            out += dense[:, e : e + 1] * y.float()
        if shared is not None:
            out += shared.apply(x).float()
        return out.to(x.dtype)


# ----- LLM -----


class InterleavedRope(TorchCpu):
    """Rope kernel hard-wired to the interleaved (GPT-J) style, where the model uses half (GPT-NeoX) rope."""

    name: ClassVar[str] = "bug-rope-interleaved"

    def rope(self, x, cos, sin, style="half"):
        return super().rope(x, cos, sin, "interleave")  # the bug: the model's style is ignored


class CorruptedLayer2Mlp(TorchCpu):
    """A port whose converted checkpoint has one wrong weight in layer 2's MLP down projection."""

    name: ClassVar[str] = "bug-corrupt-layer2-mlp"

    def prepare_llm(self, module: torch.nn.Module) -> None:
        mlp = module.model.layers[2].mlp
        with torch.no_grad():
            if hasattr(mlp, "experts"):  # a MoE layer: the same weight of every expert
                mlp.experts.down_proj[:, 3, 5] += 5.0
            else:
                mlp.down_proj.weight[3, 5] += 5.0  # the bug: one weight off by 5


class DecodeRopeShift(TorchCpu):
    """Decode steps place the new token one position too far (a port that counts the token into the cache
    length before computing its position); prefill is right, so only a decode judgement can catch it."""

    name: ClassVar[str] = "bug-decode-rope-shift"

    def causal_lm(self, model, input_ids, *, cache=None, return_model=False):
        past = cache.get_seq_length() if cache is not None else 0
        if return_model or past == 0:
            return super().causal_lm(model, input_ids, cache=cache, return_model=return_model)
        B, S = input_ids.shape
        positions = torch.arange(past + 1, past + 1 + S).expand(B, S)  # the bug: past + 1 where past is meant
        return forward(model.for_backend(self), input_ids, cache, position_ids=positions)


# ----- Ascend adapter -----


class _Rewired:
    """The simulated torch_npu as a mistaken adapter drives it: named calls get one argument rewritten."""

    def __init__(self, module: Any, **calls: Callable[..., Any]) -> None:
        self._module = module
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return self._calls.get(name) or getattr(self._module, name)


class AscendMaskNotInverted(AscendSim):
    """Passes the contract's visibility mask (True = visible, torch's convention) where Ascend wants True =
    masked out."""

    name: ClassVar[str] = "bug-ascend-mask-not-inverted"

    @classmethod
    def load(cls) -> tuple[Any, Any]:
        tnpu, npu = super().load()

        def fusion_attention(*args: Any, atten_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
            mask = None if atten_mask is None else ~atten_mask  # the bug: the visibility mask, not inverted
            return tnpu.npu_fusion_attention(*args, atten_mask=mask, **kwargs)

        return _Rewired(tnpu, npu_fusion_attention=fusion_attention), npu


class AscendDefaultScale(AscendSim):
    """Leaves the softmax scale at the op's default 1.0 instead of passing 1/sqrt(D)."""

    name: ClassVar[str] = "bug-ascend-default-scale"

    @paged.gathering  # the paged form: gathered, then this fault's contiguous code
    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        scale = 1.0 if scale is None else scale  # the bug: the op default where the contract says 1/sqrt(D)
        return super().attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)


class AscendSparseMode2(AscendSim):
    """Asks for leftUpCausal (sparse_mode 2) where rightDownCausal (3) is meant."""

    name: ClassVar[str] = "bug-ascend-sparse-mode-2"

    @classmethod
    def load(cls) -> tuple[Any, Any]:
        tnpu, npu = super().load()

        def fused_infer(*args: Any, sparse_mode: int = 0, **kwargs: Any) -> Any:
            mode = 2 if sparse_mode == 3 else sparse_mode  # the bug: top-left where bottom-right is meant
            return tnpu.npu_fused_infer_attention_score(*args, sparse_mode=mode, **kwargs)

        return _Rewired(tnpu, npu_fused_infer_attention_score=fused_infer), npu


# ----- ONNX Runtime native kernels -----


class OrtMoeConcatenatedFc1(OrtCpuMoe):
    """Lays fc1 out as [gate | up] (the natural concatenation) where swiglu_fusion=1 reads interleaved rows."""

    name: ClassVar[str] = "bug-ort-moe-concatenated-fc1"
    fc1_layout = staticmethod(lambda w_gate, w_up: torch.cat([w_gate, w_up], dim=1))  # the bug: not interleaved


class OrtGqaWindowMinusOne(OrtCpuGqa):
    """Passes flash's convention (left window w - 1) as GQA's local_window_size, which counts the diagonal in."""

    name: ClassVar[str] = "bug-ort-gqa-window-minus-one"

    def local_window(self, window: int) -> int:
        return window - 1  # the bug: one key too few
