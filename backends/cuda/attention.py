"""Contract attention on SDPA's fused kernels, choosing per case the fastest kernel that is correct for it.

The contract's causal mask is bottom-right aligned per sequence; SDPA's `is_causal` is top-left. So a case is
first reduced to what a kernel can express:
- `full`: no mask at all (non-causal, or causal decode where the one query row sees every key);
- `causal`: Sq == Skv, where both alignments coincide (SDPA `is_causal`);
- `lower_right`: causal with Sq < Skv: flash attention's own causal mode is bottom-right aligned (FA2), so the
  flash kernel takes it natively; other kernels get an explicit boolean mask;
- `mask`: anything else (a window, Sq > Skv): an explicit boolean mask, except that a window goes to the flash
  kernel's own sliding-window band (no mask; flash takes no mask).
Ragged batches (`kv_lens`) either go batched with a [B, 1, Sq, Skv] mask, or are split per sequence into slices
of the cache (views, no copy) that are each `full` / `causal` / `lower_right`, which lets flash run them.

GQA is passed natively (`enable_gqa`) to every kernel but the memory-efficient one, which refuses it: it gets
repeated kv heads. Which (kernel, split) wins is decided once per shape signature by timing the candidates on
the case's own inputs, outside any timed region, and kept (`choices`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness import ops
from harness.backend import UnsupportedCaseError
from harness.backends.cuda.memo import TensorMemo

log = logging.getLogger(__name__)

KERNELS: dict[str, SDPBackend] = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
TUNE_REPEATS = 3


def mask_kind(sq: int, skv: int, *, causal: bool, window: int | None) -> str:
    """How one (unpadded) sequence's mask maps onto SDPA: full | causal | lower_right | mask."""
    if window is not None or (causal and sq > skv):
        return "mask"
    if not causal or sq == 1:
        return "full"  # causal decode: query 0 sees keys j <= Skv - 1, i.e. all of them
    return "causal" if sq == skv else "lower_right"


@dataclass
class Choice:
    """The winning (kernel, split) of one shape signature, with what was tried."""

    kernel: str
    split: bool
    tried: dict[str, str] = field(default_factory=dict)  # "kernel/split" -> median ms, or why it was refused


class SdpaAttention:
    """Contract attention through SDPA restricted to `kernels` (auto-tuned among them when more than one)."""

    def __init__(self, kernels: Sequence[str]) -> None:
        self.kernels = tuple(kernels)
        self.choices: dict[tuple, Choice] = {}
        self.last: Choice | None = None
        self._lens: TensorMemo[tuple[int, ...]] = TensorMemo()
        self._masks: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # ----- the op -----
    def __call__(
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
        lens = self._host_lens(kv_lens)
        if lens is not None and all(n == k.shape[2] for n in lens):
            lens = None  # no padding anywhere: the unpadded path
        key = (q.dtype, tuple(q.shape), tuple(k.shape), v.shape[-1], causal, window, scale is None, lens)
        choice = self.choices.get(key)
        if choice is None:
            choice = self._tune(q, k, v, causal, window, scale, lens)
            self.choices[key] = choice
        self.last = choice
        return self._run(choice.kernel, choice.split, q, k, v, causal, window, scale, lens)

    def _host_lens(self, kv_lens: torch.Tensor | None) -> tuple[int, ...] | None:
        """kv_lens on the host, read once per tensor (and version): later calls stay free of host syncs, so the
        op can be captured into a CUDA graph."""
        if kv_lens is None:
            return None
        lens = self._lens.get(kv_lens)
        if lens is None:
            lens = tuple(int(n) for n in kv_lens.tolist())
            self._lens.put(kv_lens, lens)
        return lens

    # ----- choosing -----
    def _candidates(self, ragged: bool) -> list[tuple[str, bool]]:
        """(kernel, split) pairs to try; splitting per sequence only matters for a ragged batch."""
        out = [(kernel, False) for kernel in self.kernels]
        if ragged:
            out += [(kernel, True) for kernel in self.kernels]
        return out

    def _tune(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        window: int | None,
        scale: float | None,
        lens: tuple[int, ...] | None,
    ) -> Choice:
        tried: dict[str, str] = {}
        best: tuple[float, str, bool] | None = None
        for kernel, split in self._candidates(lens is not None):
            label = f"{kernel}/{'split' if split else 'batched'}"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # SDPA says WHY a kernel refuses only in warnings
                try:
                    times = []
                    for _ in range(TUNE_REPEATS + 1):  # the first call warms up (kernel selection, workspace)
                        _sync(q)
                        start = time.perf_counter()
                        out = self._run(kernel, split, q, k, v, causal, window, scale, lens)
                        _sync(q)
                        times.append(time.perf_counter() - start)
                except (RuntimeError, TypeError, NotImplementedError) as exc:  # TypeError: an op this torch lacks
                    tried[label] = "refused: " + _refusal(exc, caught)
                    continue
            if not bool(torch.isfinite(out).all()):
                tried[label] = "refused: non-finite output"
                continue
            median = sorted(times[1:])[len(times[1:]) // 2]
            tried[label] = f"{median * 1e3:.4g} ms"
            if best is None or median < best[0]:
                best = (median, kernel, split)
        if best is None:
            if "math" not in self.kernels and len(self.kernels) > 1:
                log.info("no fused SDPA kernel takes this case (%s); using math", tried)
                return Choice("math", lens is not None, tried)
            raise UnsupportedCaseError(f"SDPA's {'/'.join(self.kernels)} kernel refuses this case: {tried}")
        return Choice(best[1], best[2], tried)

    # ----- running -----
    def _run(
        self,
        kernel: str,
        split: bool,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        window: int | None,
        scale: float | None,
        lens: tuple[int, ...] | None,
    ) -> torch.Tensor:
        B, Hq, Sq, _ = q.shape
        Skv, Dv = k.shape[2], v.shape[3]
        if lens is None:
            return self._sequence(kernel, q, k, v, causal, window, scale, Skv)
        if not split:
            return self._masked(kernel, q, k, v, causal, window, scale, lens)
        out = q.new_empty(B, Hq, Sq, Dv)  # [B, Hq, Sq, Dv]
        for b, n in enumerate(lens):
            if n == 0:
                out[b].zero_()
                continue
            out[b : b + 1] = self._sequence(
                kernel, q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n], causal, window, scale, n
            )
        return out

    def _sequence(
        self,
        kernel: str,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        window: int | None,
        scale: float | None,
        skv: int,
    ) -> torch.Tensor:
        """Unpadded sequences (every key of k / v is real)."""
        kind = mask_kind(q.shape[2], skv, causal=causal, window=window)
        if kind == "full":
            return _sdpa(kernel, q, k, v, scale=scale)
        if kind == "causal":
            return _sdpa(kernel, q, k, v, scale=scale, is_causal=True)
        if kind == "lower_right" and kernel == "flash":
            return _flash_bottom_right(q, k, v, scale)
        if kind == "mask" and kernel == "flash" and window is not None and q.shape[2] <= skv:
            return _flash_window(q, k, v, scale, causal=causal, window=window)
        return self._masked(kernel, q, k, v, causal, window, scale, None)

    def _masked(
        self,
        kernel: str,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        window: int | None,
        scale: float | None,
        lens: tuple[int, ...] | None,
    ) -> torch.Tensor:
        mask, empty_rows = self._mask(q.shape[0], q.shape[2], k.shape[2], causal, window, lens, q.device)
        out = _sdpa(kernel, q, k, v, scale=scale, attn_mask=mask)  # [B, Hq, Sq, Dv]
        if empty_rows is not None:
            out = out.masked_fill(empty_rows, 0.0)  # a row that sees no key is NaN inside SDPA; the contract: zeros
        return out

    def _mask(
        self,
        b: int,
        sq: int,
        skv: int,
        causal: bool,
        window: int | None,
        lens: tuple[int, ...] | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The boolean visibility mask [B|1, 1, Sq, Skv] and the rows that see nothing, built once per shape."""
        key = (b if lens else 1, sq, skv, causal, window, lens, str(device))
        if key not in self._masks:
            kv_lens = torch.tensor(lens) if lens is not None else None
            vis = ops.visible_keys(sq, skv, batch=key[0], causal=causal, window=window, kv_lens=kv_lens)
            empty = ~vis.any(dim=-1, keepdim=True)  # [B, Sq, 1]
            self._masks[key] = (
                vis[:, None].to(device),  # [B, 1, Sq, Skv]
                empty[:, None].to(device) if bool(empty.any()) else None,  # [B, 1, Sq, 1]
            )
        return self._masks[key]


def _sdpa(
    kernel: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None,
    is_causal: bool = False,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPA pinned to one kernel: a kernel that cannot take the case raises instead of falling back silently."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and kernel == "efficient":  # the memory-efficient kernel refuses GQA: repeat the kv heads
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        gqa = False
    with sdpa_kernel([KERNELS[kernel]]):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )


def _flash_bottom_right(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal attention with Sq < Skv through the flash kernel, whose causal mode is bottom-right aligned.

    SDPA's public entry refuses flash for non-square causal (its `is_causal` means top-left), so this calls the
    kernel's own op; GQA is native to it. The parity checks (decode / chunked prefill) verify the alignment."""
    if not q.is_cuda:
        raise RuntimeError("the flash attention kernel runs on CUDA only")
    out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)
    return out[0]


def _flash_window(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, *, causal: bool, window: int
) -> torch.Tensor:
    """A sliding window through the flash kernel's own window (no mask, and blocks outside the band skipped).

    Flash's band is bottom-right aligned: key j is visible to query i iff
    i + Skv - Sq - left <= j <= i + Skv - Sq + right; the contract's w keys (diagonal included) are left = w - 1,
    right = 0 when causal (no upper bound otherwise)."""
    if not q.is_cuda:
        raise RuntimeError("the flash attention kernel runs on CUDA only")
    sq, skv = q.shape[2], k.shape[2]
    out = torch.ops.aten._flash_attention_forward(
        q.transpose(1, 2),  # [B, Sq, Hq, D] views: flash's layout
        k.transpose(1, 2),
        v.transpose(1, 2),
        None,
        None,
        sq,
        skv,
        0.0,
        causal,
        False,
        scale=scale,
        window_size_left=window - 1,
        window_size_right=0 if causal else -1,
    )[0]  # [B, Sq, Hq, Dv]
    return out.transpose(1, 2)  # [B, Hq, Sq, Dv]


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def _refusal(exc: Exception, caught: list[warnings.WarningMessage]) -> str:
    """The reason a kernel refused: SDPA's warnings say why; its exception only says that it did."""
    reasons = [
        str(w.message).split(" (Triggered internally")[0]
        for w in caught
        if "not used because" not in str(w.message) and "runtime disabled" not in str(w.message)
    ]
    text = "; ".join(dict.fromkeys(reasons)) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return text[:240]
