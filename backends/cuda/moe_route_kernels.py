"""Triton kernels of the MoE layer's routing and permutation: two passes over memory instead of a dozen.

`route`: one program per block of BT tokens reads the block's [BT, E] router logits once and writes the top-k ids
and combine weights, each slot's rank among the block's earlier slots of the same expert, and the block's
per-expert histogram (no atomics: one row of the histogram per block). A tiny torch step turns the histograms
into group offsets and per-(block, expert) bases. `permute`: one program per (token, column block) reads a token
row of x once, writes it to each of its k slots in expert order (dest = base[block, e] + rank), and records the
slot's row for the combine. The slot order equals a stable sort of the flattened ids by expert.

Selection is in float64 (softmax: exp(l - max) / sum; sigmoid + bias and DeepSeek-V3's group ranking by the sum
of each group's top-2), as the float64 reference selects: logits 1 float32 ulp apart are told apart, and an exact
tie goes to the lower expert (and group) index. Weights are float32. Triton is imported on first use only.
"""

from __future__ import annotations

import functools
from typing import Any

SOFTMAX, SIGMOID, GIVEN = 0, 1, 2  # SCHEME: how ids are chosen (GIVEN: loaded, counted and ranked only)


@functools.cache
def kernels() -> dict[str, Any]:
    """Build the kernels once (imports triton; never at import time of this module)."""
    import triton
    import triton.language as tl

    @triton.jit
    def route_kernel(
        logits_ptr,
        bias_ptr,
        ids_in_ptr,
        ids_ptr,
        w_ptr,
        rank_ptr,
        hist_ptr,
        T,
        E,
        stride_l,
        scaling,
        K: tl.constexpr,
        KP: tl.constexpr,
        BT: tl.constexpr,
        BE: tl.constexpr,
        SCHEME: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        G: tl.constexpr,
        GP: tl.constexpr,
        GS: tl.constexpr,
        TOPK_GROUP: tl.constexpr,
        RENORM: tl.constexpr,
    ):
        b = tl.program_id(0)
        rows = b * BT + tl.arange(0, BT)  # [BT]
        rmask = rows < T
        cols = tl.arange(0, BE)  # [BE]
        cmask = cols < E
        kcol = tl.arange(0, KP)  # [KP]
        kmask = rmask[:, None] & (kcol[None, :] < K)  # [BT, KP]
        ids_tile = tl.zeros([BT, KP], dtype=tl.int32)
        onehot = tl.zeros([BT, BE], dtype=tl.int32)  # [BT, BE] 1 where token t chose expert e
        if SCHEME == 2:
            ids_tile = tl.load(ids_in_ptr + rows[:, None] * K + kcol[None, :], mask=kmask, other=0).to(tl.int32)
            for j in tl.static_range(K):
                idx = tl.sum(tl.where(kcol[None, :] == j, ids_tile, 0), axis=1)  # [BT]
                onehot += ((cols[None, :] == idx[:, None]) & rmask[:, None]).to(tl.int32)
        else:
            m2 = rmask[:, None] & cmask[None, :]
            logit = tl.load(logits_ptr + rows[:, None] * stride_l + cols[None, :], mask=m2, other=0.0).to(tl.float32)
            neg = float("-inf")
            if SCHEME == 0:
                l32 = tl.where(cmask[None, :], logit, neg)  # rows past T stay finite: no nan
                ex = tl.exp(l32 - tl.max(l32, axis=1)[:, None])  # [BT, BE] float32
                score = ex / tl.sum(ex, axis=1)[:, None]
                l64 = tl.where(cmask[None, :], logit.to(tl.float64), neg)
                ex64 = tl.exp(l64 - tl.max(l64, axis=1)[:, None])
                choice = tl.where(m2, ex64 / tl.sum(ex64, axis=1)[:, None], neg)  # softmax in float64
            else:
                score = 1.0 / (1.0 + tl.exp(-logit))  # float32 sigmoid: the weights
                choice = 1.0 / (1.0 + tl.exp(-logit.to(tl.float64)))
                if HAS_BIAS:
                    choice += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float64)[None, :]
                choice = tl.where(m2, choice, neg)
                if G > 1:  # keep the TOPK_GROUP groups with the largest sum of their top-2 choice values
                    group = cols // GS  # [BE]
                    gcols = tl.arange(0, GP)  # [GP] groups, padded to a power of two
                    gscore = tl.full([BT, GP], neg, dtype=tl.float64)
                    for g in tl.static_range(G):
                        in_g = tl.where((group == g)[None, :], choice, neg)
                        top1 = tl.max(in_g, axis=1)  # [BT]; then its lowest column, removed for the 2nd
                        i1 = tl.min(tl.where(in_g == top1[:, None], cols[None, :], BE), axis=1)
                        top2 = tl.max(tl.where(cols[None, :] == i1[:, None], neg, in_g), axis=1)
                        gscore = tl.where(gcols[None, :] == g, (top1 + top2)[:, None], gscore)
                    keep = tl.zeros([BT, BE], dtype=tl.int32)
                    for _ in tl.static_range(TOPK_GROUP):
                        gbest = tl.max(gscore, axis=1)  # an exact tie goes to the lower group
                        gi = tl.min(tl.where(gscore == gbest[:, None], gcols[None, :], GP), axis=1)
                        keep = keep | (group[None, :] == gi[:, None]).to(tl.int32)
                        gscore = tl.where(gcols[None, :] == gi[:, None], neg, gscore)
                    choice = tl.where(keep != 0, choice, neg)
            w_tile = tl.zeros([BT, KP], dtype=tl.float32)
            for j in tl.static_range(K):
                best = tl.max(choice, axis=1)  # [BT]; an exact tie goes to the lower expert
                idx = tl.min(tl.where(choice == best[:, None], cols[None, :], BE), axis=1)
                hit = cols[None, :] == idx[:, None]  # [BT, BE]
                wj = tl.sum(tl.where(hit, score, 0.0), axis=1)  # [BT]
                choice = tl.where(hit, neg, choice)
                ids_tile = tl.where(kcol[None, :] == j, idx[:, None], ids_tile)
                w_tile = tl.where(kcol[None, :] == j, wj[:, None], w_tile)
                onehot += (hit & rmask[:, None]).to(tl.int32)
            if RENORM:
                w_tile = w_tile / tl.sum(w_tile, axis=1)[:, None]
            w_tile = w_tile * scaling
            tl.store(ids_ptr + rows[:, None] * K + kcol[None, :], ids_tile, mask=kmask)
            tl.store(w_ptr + rows[:, None] * K + kcol[None, :], w_tile, mask=kmask)
        prefix = tl.cumsum(onehot, axis=0) - onehot  # [BT, BE] earlier tokens of the block on expert e
        tl.store(hist_ptr + b * E + cols, tl.sum(onehot, axis=0), mask=cmask)
        rank_tile = tl.zeros([BT, KP], dtype=tl.int32)
        for j in tl.static_range(K):
            idx = tl.sum(tl.where(kcol[None, :] == j, ids_tile, 0), axis=1)  # [BT]
            r = tl.sum(tl.where(cols[None, :] == idx[:, None], prefix, 0), axis=1)
            rank_tile = tl.where(kcol[None, :] == j, r[:, None], rank_tile)
        tl.store(rank_ptr + rows[:, None] * K + kcol[None, :], rank_tile, mask=kmask)

    @triton.jit
    def permute_kernel(
        x_ptr, ids_ptr, rank_ptr, base_ptr, slot_ptr, xs_ptr, H, E, stride_x, stride_xs, K: tl.constexpr,
        BT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1)
        cols = c * BLOCK + tl.arange(0, BLOCK)
        mask = cols < H
        row = tl.load(x_ptr + t * stride_x + cols, mask=mask)  # the token row, read once
        b = t // BT
        for j in tl.static_range(K):
            e = tl.load(ids_ptr + t * K + j).to(tl.int64)
            dest = (tl.load(base_ptr + b * E + e) + tl.load(rank_ptr + t * K + j)).to(tl.int64)
            tl.store(slot_ptr + t * K + j, dest, mask=c == 0)
            tl.store(xs_ptr + dest * stride_xs + cols, row, mask=mask)

    return {"route": route_kernel, "permute": permute_kernel, "cdiv": triton.cdiv, "next_pow2": triton.next_power_of_2}
