"""How attention, MoE and LLM cases split into parts that run alone for --invariance (harness.invariance): a
batch row, the first half of the tokens, a shorter prefill chunk. Kept apart from the workloads so their files
only name the hook."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from harness.lazy import torch
from harness.workload import InvariancePart

ATTENTION_INPUTS = frozenset({"q", "k", "v", "kv", "kv_lens"})  # kv: MLA's latent cache [B, Skv, D]
MOE_TOKEN_INPUTS = ("x", "route_weights", "route_ids")  # the [T, ...] inputs; weights are shared by every token


def attention_parts(shape: Any, tensors: Mapping[str, torch.Tensor]) -> tuple[InvariancePart, ...]:
    """Each batch row alone (B > 1), and a causal call's first half of the queries as a shorter chunk (its keys
    up to the chunk's last query). Another input form (a paged cache) is not split: ()."""
    if set(tensors) - ATTENTION_INPUTS:
        return ()
    parts = []
    if shape.b > 1:
        for b in range(shape.b):
            lens = None if shape.kv_lens is None else (shape.kv_lens[b],)
            rows = {n: t[b : b + 1] for n, t in tensors.items()}  # q [1,Hq,Sq,D], k/v [1,Hkv,Skv,D], kv [1,Skv,D]
            parts.append(InvariancePart(f"row{b}", replace(shape, b=1, kv_lens=lens), rows, (slice(b, b + 1),)))
    if shape.causal and shape.kv_lens is None and shape.sq > 1 and "k" in tensors:
        h = shape.sq // 2
        skv = shape.skv - shape.sq + h  # bottom-right causal: query h-1 sees keys up to skv - sq + h - 1
        chunk = {
            "q": tensors["q"][:, :, :h].contiguous(),  # [B, Hq, h, D]
            "k": tensors["k"][:, :, :skv].contiguous(),  # [B, Hkv, skv, D]
            "v": tensors["v"][:, :, :skv].contiguous(),
        }
        index = (slice(None), slice(None), slice(0, h))
        parts.append(InvariancePart(f"chunk{h}", replace(shape, sq=h, skv=skv), chunk, index))
    return tuple(parts)


def first_tokens(shape: Any, tensors: Mapping[str, torch.Tensor]) -> tuple[InvariancePart, ...]:
    """MoE: the first half of the tokens alone (each token alone would be T calls)."""
    if shape.t < 2:
        return ()
    h = shape.t // 2
    part = {n: t[:h] if n in MOE_TOKEN_INPUTS else t for n, t in tensors.items()}
    return (InvariancePart(f"tokens0-{h}", replace(shape, t=h), part, (slice(0, h),)),)


def sequences(shape: Any, tensors: Mapping[str, torch.Tensor]) -> tuple[InvariancePart, ...]:
    """LLM: each sequence of the batch alone."""
    if shape.batch < 2:
        return ()
    ids = tensors["input_ids"]  # [B, S]
    return tuple(
        InvariancePart(f"seq{b}", replace(shape, batch=1), {"input_ids": ids[b : b + 1]}, (slice(b, b + 1),))
        for b in range(shape.batch)
    )
