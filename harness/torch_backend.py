"""Generic torch implementations of the kernel contract, for any torch device.

A torch-device backend (torch-cpu, cuda, ascend) subclasses `TorchBackend`, sets its device, and overrides only
the ops it has native kernels for; everything else runs these device-agnostic torch ops in the case dtype.
"""

from __future__ import annotations

import platform
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from harness import ops as contract
from harness.backend import Backend


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
    ) -> torch.Tensor:
        B, Hq, Sq, _ = q.shape
        Hkv, Skv = k.shape[1], k.shape[2]
        # SDPA's is_causal is top-left aligned: only safe when the alignments coincide (Sq == Skv, no padding).
        plain_causal = causal and window is None and kv_lens is None and Sq == Skv
        mask = None
        if (causal and not plain_causal) or kv_lens is not None:
            mask = contract.visible_keys(
                Sq, Skv, batch=B, causal=causal, window=window, kv_lens=kv_lens, device=q.device
            )[:, None]  # [B, 1, Sq, Skv]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=plain_causal, scale=scale, enable_gqa=Hq != Hkv
        )  # [B, Hq, Sq, Dv]
        if mask is not None:
            # A row that sees no key is NaN inside SDPA; the contract says zeros.
            out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
        return out

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, eps)

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
        return x * cos + contract.rotate(x, style) * sin

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
