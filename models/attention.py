"""Attention workloads: prefill, chunked prefill, decode and sliding window, each with GQA and MQA shapes.

Each workload fixes the attention pattern (which alignment and lengths matter) and offers presets: `tiny` (CI,
milliseconds even in float16 on a CPU without fp16 arithmetic), `small` (CPU benchmarking) and `real` (the
geometry of Llama-3-8B, Qwen3-32B and DeepSeek-V3's MLA, for GPUs and NPUs).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from harness import ops
from harness.lazy import torch
from harness.models import mla, paged_attention
from harness.models.invariance_parts import attention_parts
from harness.models.shapes import ATTENTION_MODELS, AttentionDims, AttentionShape
from harness.workload import CaseInputs, InvariancePart, Workload, WorkloadError, random_tensor

KINDS = ("prefill", "chunked_prefill", "decode", "sliding_window")


@functools.lru_cache(maxsize=256)
def visible_pairs(shape: AttentionShape) -> int:
    """(query, key) pairs the mask lets through, summed over the batch: the work a good kernel does."""
    lens = torch.tensor(shape.kv_lens) if shape.kv_lens is not None else None
    vis = ops.visible_keys(
        shape.sq, shape.skv, batch=shape.b, causal=shape.causal, window=shape.window, kv_lens=lens
    )  # [B, Sq, Skv]
    return int(vis.sum())


class AttentionWorkload(Workload):
    op: ClassVar[str] = "attention"

    def __init__(self, kind: str, presets: Mapping[str, Mapping[str, AttentionShape]], description: str) -> None:
        if kind not in KINDS:
            raise WorkloadError(f"attention kind {kind!r} is not one of: {', '.join(KINDS)}")
        super().__init__(f"attention.{kind}", presets, description)
        self.kind = kind

    def make_inputs(
        self, shape: AttentionShape, dtype: torch.dtype, seed: int, distribution: str
    ) -> dict[str, torch.Tensor]:
        s = shape
        inputs = {
            "q": random_tensor((s.b, s.hq, s.sq, s.d), dtype, seed=seed, name="q", distribution=distribution),
            "k": random_tensor((s.b, s.hkv, s.skv, s.d), dtype, seed=seed, name="k", distribution=distribution),
            "v": random_tensor((s.b, s.hkv, s.skv, s.dv), dtype, seed=seed, name="v", distribution=distribution),
        }
        if s.kv_lens is not None:
            inputs["kv_lens"] = torch.tensor(s.kv_lens, dtype=torch.int64)
        return inputs

    def op_kwargs(self, shape: AttentionShape) -> dict[str, Any]:
        return {"causal": shape.causal, "window": shape.window, "scale": shape.scale}

    def flops(self, shape: AttentionShape) -> float:
        # Q K^T and P V: 2 flops per multiply-add, over visible pairs only (causal halves the work).
        return 2.0 * shape.hq * visible_pairs(shape) * (shape.d + shape.dv)

    def bytes_moved(self, shape: AttentionShape, itemsize: int) -> float:
        kv_tokens = sum(shape.lens())
        elems = shape.b * shape.hq * shape.sq * (shape.d + shape.dv) + shape.hkv * kv_tokens * (shape.d + shape.dv)
        return float(elems * itemsize)

    def invariance_parts(self, group: CaseInputs) -> tuple[InvariancePart, ...]:
        return attention_parts(group.shape, group.tensors)

    def reduction_length(self, shape: AttentionShape) -> int:
        return max(max(shape.lens(), default=1), shape.d)

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: AttentionShape) -> AttentionShape:
        self.check_input_names(tensors)
        q, k, v = tensors["q"], tensors["k"], tensors["v"]
        kv_lens = tensors.get("kv_lens")
        try:
            ops.check_attention_inputs(q, k, v, causal=template.causal, window=template.window, kv_lens=kv_lens)
        except ops.ContractError as exc:
            raise WorkloadError(f"{self.name}: {exc}") from None
        B, Hq, Sq, D = q.shape
        Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
        if self.kind == "decode" and Sq != 1:
            raise WorkloadError(
                f"{self.name}: input q: expected shape [{B}, {Hq}, 1, {D}] (decode: Sq = 1), got {list(q.shape)}"
            )
        if self.kind == "prefill" and Sq != Skv:
            raise WorkloadError(
                f"{self.name}: input k: expected shape [{B}, {Hkv}, {Sq}, {D}] (prefill: Skv = Sq), got {list(k.shape)}"
            )
        if self.kind == "chunked_prefill" and Sq >= Skv:
            raise WorkloadError(
                f"{self.name}: input k: expected Skv > Sq = {Sq} (chunked prefill), got shape {list(k.shape)}"
            )
        lens = tuple(int(x) for x in kv_lens.tolist()) if kv_lens is not None else None
        return replace(template, b=B, hq=Hq, hkv=Hkv, sq=Sq, skv=Skv, d=D, dv=Dv, kv_lens=lens)


def _shape(dims: AttentionDims, **kw: Any) -> AttentionShape:
    return AttentionShape(hq=dims.hq, hkv=dims.hkv, d=dims.d, dv=dims.dv, scale=dims.scale, **kw)


# Tiny geometry: GQA 4:2 with D 32, and MQA 4:1 with D != Dv (as MLA has). Small: the CPU anchor shape.
TINY = {"gqa": AttentionDims(hq=4, hkv=2, d=32, dv=32), "mqa": AttentionDims(hq=4, hkv=1, d=32, dv=16)}
SMALL = {"gqa": AttentionDims(hq=8, hkv=2, d=64, dv=64), "mqa": AttentionDims(hq=8, hkv=1, d=64, dv=64)}


def _presets(tiny: dict[str, Any], small: dict[str, Any], real: dict[str, Any]) -> dict[str, dict[str, AttentionShape]]:
    return {
        "tiny": {name: _shape(dims, **tiny) for name, dims in TINY.items()},
        "small": {name: _shape(dims, **small) for name, dims in SMALL.items()},
        "real": {name: _shape(dims, **real) for name, dims in ATTENTION_MODELS.items()},
    }


def _with_variants(
    base: dict[str, dict[str, AttentionShape]], **variants: dict[str, dict[str, AttentionShape]]
) -> dict[str, dict[str, AttentionShape]]:
    """Presets holding the base shapes plus each variant's under `<shape>-<variant>`: one workload, every path
    (a window applied only on one path must meet the others)."""
    return {
        preset: {
            **shapes,
            **{f"{name}-{suffix}": shape for suffix, v in variants.items() for name, shape in v[preset].items()},
        }
        for preset, shapes in base.items()
    }


def workloads() -> list[Workload]:
    """The built-in attention workloads (the `harness.workloads` entry point)."""
    built = [
        AttentionWorkload(
            "prefill",
            _presets(
                dict(b=2, sq=64, skv=64),
                dict(b=1, sq=512, skv=512),
                dict(b=1, sq=8192, skv=8192),
            ),
            "causal self-attention over a whole prompt (Sq = Skv)",
        ),
        AttentionWorkload(
            "chunked_prefill",
            _presets(
                dict(b=2, sq=16, skv=64, kv_lens=(64, 40)),
                dict(b=2, sq=128, skv=1024, kv_lens=(1024, 700)),
                dict(b=2, sq=2048, skv=8192, kv_lens=(8192, 5000)),
            ),
            "a chunk of new queries over the cached prefix plus itself (Sq < Skv, bottom-right causal, ragged)",
        ),
        AttentionWorkload(
            "decode",
            _presets(
                dict(b=2, sq=1, skv=64, kv_lens=(64, 23)),
                dict(b=4, sq=1, skv=2048, kv_lens=(2048, 1500, 777, 2048)),
                dict(b=8, sq=1, skv=32768, kv_lens=(32768, 30000, 32768, 28000, 32768, 31000, 32768, 32768)),
            ),
            "one new token per sequence over a ragged KV cache (Sq = 1, kv_lens)",
        ),
        AttentionWorkload(
            "sliding_window",
            _with_variants(
                _presets(
                    dict(b=2, sq=64, skv=64, window=16),
                    dict(b=1, sq=1024, skv=1024, window=256),
                    dict(b=1, sq=8192, skv=8192, window=4096),
                ),
                # decode over a ragged cache: one length under the window (nothing cut), the others over it
                decode=_presets(
                    dict(b=3, sq=1, skv=64, kv_lens=(64, 23, 9), window=16),
                    dict(b=4, sq=1, skv=2048, kv_lens=(2048, 1500, 777, 100), window=256),
                    dict(b=4, sq=1, skv=32768, kv_lens=(32768, 30000, 9000, 2000), window=4096),
                ),
                # chunked prefill: the window slides with the bottom-right aligned diagonal (Sq < Skv, ragged)
                chunked=_presets(
                    dict(b=2, sq=16, skv=64, kv_lens=(64, 40), window=16),
                    dict(b=2, sq=128, skv=1024, kv_lens=(1024, 700), window=256),
                    dict(b=2, sq=2048, skv=8192, kv_lens=(8192, 5000), window=4096),
                ),
            ),
            "causal attention limited to the last w keys (Mistral-style sliding window): prefill (Sq = Skv), "
            "decode (`*-decode`: Sq = 1, ragged kv_lens) and chunked prefill (`*-chunked`: Sq < Skv, ragged)",
        ),
    ]
    by_name = {w.name: w for w in built}
    return [  # the block-table forms, and DeepSeek's absorbed MLA decode (op `mla`)
        *built,
        paged_attention.paged_decode(by_name["attention.decode"], TINY, SMALL),
        paged_attention.paged_prefill(by_name["attention.chunked_prefill"], TINY, SMALL),
        mla.mla_decode(by_name["attention.decode"]),
    ]
