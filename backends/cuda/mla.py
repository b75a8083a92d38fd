"""Absorbed MLA decode on CUDA: the faster correct one of two paths, chosen per shape by timing both.

- `gemm`: two batched GEMMs with the heads folded into rows (harness/torch_mla.py): scores in float32 straight
  off the tensor cores (bmm out_dtype), masked float32 softmax, P x kv[..., :Dv]. Reads the cache twice and
  writes float32 scores, but every step is a large GEMM or an elementwise pass.
- `sdpa/<kernel>` (Sq = 1 only): the H heads as H query rows of ONE head over the one latent head ([B, 1, H, D]
  against [B, 1, Skv, D]; the same keys for every row, so no mask but kv_lens), through SdpaAttention's kernels
  (cuDNN / memory-efficient take D 576 where they do; flash refuses D > 256): one fused pass over the cache.
With Sq > 1 (MTP) the rows of different query positions see different keys, so only `gemm` runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness import paged, torch_mla
from harness.backends.cuda.attention import TUNE_REPEATS, SdpaAttention, _sync
from harness.op_types import ContractError


@dataclass
class MlaChoice:
    path: str  # "gemm" or "sdpa/<kernel>"
    tried: dict[str, str] = field(default_factory=dict)  # path -> median ms, or why it was refused


class CudaMla:
    """Contract `mla` on the device; `sdpa` is the backend's own (tuned, kernel-pinned) SDPA dispatcher."""

    def __init__(self, sdpa: SdpaAttention) -> None:
        self.sdpa = sdpa
        self.choices: dict[tuple, MlaChoice] = {}
        self.last: MlaChoice | None = None

    def __call__(
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
        if block_table is not None:  # paged: gathered in logical order on the device, then the contiguous paths
            if kv_lens is None:
                raise ContractError("mla input kv_lens: required with block_table")
            kv = paged.gather(kv[:, :, None], block_table, kv_lens)[:, 0]  # [B, MB*BS, D]
        key = (q.dtype, tuple(q.shape), tuple(kv.shape), dv, causal, kv_lens is None)
        choice = self.choices.get(key)
        if choice is None:
            choice = self._tune(q, kv, dv, scale, causal, kv_lens)
            self.choices[key] = choice
        self.last = choice
        return self.run(choice.path, q, kv, dv, scale, causal, kv_lens)

    def run(
        self,
        path: str,
        q: torch.Tensor,
        kv: torch.Tensor,
        dv: int,
        scale: float,
        causal: bool,
        kv_lens: torch.Tensor | None,
    ) -> torch.Tensor:
        """One path on contiguous kv [B, Skv, D]."""
        if path == "gemm":
            return torch_mla.absorbed_mla(q, kv, dv=dv, scale=scale, causal=causal, kv_lens=kv_lens)
        kernel = path.split("/", 1)[1]
        if q.shape[2] != 1:
            raise RuntimeError("the folded SDPA path takes one query position (Sq = 1)")
        rows = q.transpose(1, 2)  # [B, 1, H, D]: the heads as query rows of one head (a view)
        k = kv[:, None]  # [B, 1, Skv, D]
        lens = self.sdpa._host_lens(kv_lens)
        out = self.sdpa._run(kernel, lens is not None, rows, k, k[..., :dv], False, None, scale, lens)
        return out.transpose(1, 2)  # [B, H, 1, Dv]

    def _tune(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        dv: int,
        scale: float,
        causal: bool,
        kv_lens: torch.Tensor | None,
    ) -> MlaChoice:
        paths = ["gemm"] + ([f"sdpa/{k}" for k in self.sdpa.kernels] if q.shape[2] == 1 else [])
        tried: dict[str, str] = {}
        best: tuple[float, str] | None = None
        for path in paths:
            try:
                times = []
                for _ in range(TUNE_REPEATS + 1):  # the first call warms up
                    _sync(q)
                    start = time.perf_counter()
                    out = self.run(path, q, kv, dv, scale, causal, kv_lens)
                    _sync(q)
                    times.append(time.perf_counter() - start)
            except (RuntimeError, TypeError, NotImplementedError) as exc:
                tried[path] = "refused: " + (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:200]
                continue
            if not bool(torch.isfinite(out).all()):
                tried[path] = "refused: non-finite output"
                continue
            median = sorted(times[1:])[len(times[1:]) // 2]
            tried[path] = f"{median * 1e3:.4g} ms"
            if best is None or median < best[0]:
                best = (median, path)
        assert best is not None, tried  # gemm takes every case
        return MlaChoice(best[1], tried)
