"""Generic torch implementations of the kernel contract, for any torch device.

A torch-device backend (torch-cpu, cuda, ascend) subclasses `TorchBackend`, sets its device, and overrides only
the ops it has native kernels for; everything else runs these device-agnostic torch ops in the case dtype.
"""

from __future__ import annotations

import platform
from typing import Any, ClassVar

from harness import ops, paged, torch_mla, torch_quant
from harness.backend import Backend
from harness.lazy import F, torch
from harness.op_types import Experts, QuantSpec, Routing, RoutingSpec, SharedExpert


class TorchBackend(Backend):
    """torch ops in the case dtype on `device`; attention through SDPA with an explicit bottom-right mask."""

    device: ClassVar[str] = "cpu"

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu")

    def synchronize(self) -> None:
        """CPU torch ops are synchronous; device subclasses override."""

    def environment(self) -> dict[str, Any]:
        return {
            "torch": torch.__version__,
            "device_name": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        }

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = False,
        window: int | None = None,
        scale: float | None = None,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if block_table is not None:  # paged: gather in logical order, then the contiguous path
            assert kv_lens is not None, "attention: kv_lens is required with block_table"
            k, v = paged.to_contiguous(k, v, block_table, kv_lens)  # [B, Hkv, MB*BS, D]
        B, Hq, Sq, _ = q.shape
        Hkv, Skv = k.shape[1], k.shape[2]
        # SDPA's is_causal is top-left aligned: only safe when the alignments coincide (Sq == Skv, no padding).
        plain_causal = bool(causal and window is None and kv_lens is None and Sq == Skv)  # bool(): export-friendly
        mask = None
        if (causal and not plain_causal) or kv_lens is not None:
            mask = ops.visible_keys(Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens, device=q.device)[
                :, None
            ]  # [B, 1, Sq, Skv]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=plain_causal, scale=scale, enable_gqa=Hq != Hkv
        )  # [B, Hq, Sq, Dv]
        if mask is not None:
            # A row that sees no key is NaN inside SDPA; the contract says zeros.
            out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
        return out

    def mla(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        *,
        dv: int,
        scale: float,
        causal: bool = True,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Absorbed MLA as two GEMMs with the heads folded into rows (harness/torch_mla.py). A subclass that
        replaces `attention` but not `mla` gets the contract's default instead (its own attention on views of
        the latent cache), so whatever its attention does, right or wrong, shows on MLA too."""
        kw: dict[str, Any] = {
            "dv": dv,
            "scale": scale,
            "causal": causal,
            "kv_lens": kv_lens,
            "block_table": block_table,
        }
        if type(self).attention is not TorchBackend.attention:
            return super().mla(q, kv, **kw)
        return torch_mla.absorbed_mla(q, kv, **kw)

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, eps)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
        return x * cos + ops.rotate(x, style) * sin

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    def route(self, logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
        # Scores in float32 whatever the case dtype, as transformers' routers do; weights back in the case dtype.
        chosen = ops.route_scores(logits.float(), spec, bias=None if bias is None else bias.float())
        return Routing(chosen.weights.to(logits.dtype), chosen.ids)

    def experts(self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None) -> torch.Tensor:
        """Sort token slots by expert, run each expert on its contiguous segment, combine with index_add_."""
        T, H = x.shape
        w_gate, w_up, w_down = experts.tensors()
        E = w_gate.shape[0]
        weights, ids = routing.weights.float(), routing.ids.long()  # [T, k]
        k = ids.shape[1]
        flat = ids.reshape(-1)  # [T*k] expert of each (token, slot)
        order = torch.argsort(flat, stable=True)  # slots grouped by expert
        token = order // k  # [T*k] source token of each grouped slot
        counts = torch.bincount(flat, minlength=E).tolist()
        grouped = x[token]  # [T*k, H]
        expert_out = torch.empty_like(grouped)  # [T*k, H]
        start = 0
        for e, n in enumerate(counts):
            if n:
                seg = grouped[start : start + n]  # [n, H]
                expert_out[start : start + n] = (F.silu(seg @ w_gate[e].T) * (seg @ w_up[e].T)) @ w_down[e].T
                start += n
        combined = torch.zeros(T, H, dtype=torch.float32, device=x.device)  # accumulate in float32
        combined.index_add_(0, token, expert_out.float() * weights.reshape(-1)[order, None])
        if shared is not None:
            combined += shared.apply(x).float()  # [T, H]
        return combined.to(x.dtype)

    def linear(self, x: torch.Tensor, w: torch.Tensor, *, quant: QuantSpec | None = None) -> torch.Tensor:
        return x @ w.T if quant is None else torch_quant.linear(x, w, quant)

    def quant_experts(
        self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None, quant: QuantSpec
    ) -> torch.Tensor:
        return torch_quant.experts(x, experts, routing, shared, quant)

    def causal_lm(self, model: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        """The workload model in the case dtype on this device, with this backend's ops bound into it."""
        return model.run(self, input_ids, cache=cache, return_model=return_model)

    def prepare_llm(self, module: torch.nn.Module) -> None:
        """Hook run once on each model copy before its ops are bound (a port's weight conversion goes here)."""
