"""Planted bug: GQA head mapping h -> h % Hkv (tiling kv heads) instead of h -> h // (Hq / Hkv)."""

from __future__ import annotations

from typing import ClassVar

from backends.torch_cpu import TorchCpu


class WrongGqa(TorchCpu):
    name: ClassVar[str] = "bug-wrong-gqa"

    def attention(self, q, k, v, *, causal=False, window=None, scale=None, kv_lens=None):  # type: ignore[override]
        group = q.shape[1] // k.shape[1]
        k_rep = k.repeat(1, group, 1, 1)  # the bug: tile, so query head h reads kv head h % Hkv
        v_rep = v.repeat(1, group, 1, 1)
        return super().attention(q, k_rep, v_rep, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
