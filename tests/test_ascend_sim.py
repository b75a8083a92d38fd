"""The torch_npu simulator alone, against ../shared/ascend-api.md, and the Ascend adapter through it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from harness import ops
from harness.backends.ascend import sim

G = torch.Generator().manual_seed(0)


def rnd(*shape: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.randn(*shape, generator=G).to(dtype)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 3e-3) -> bool:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-12)) < tol


# ----- fusion attention -----


def test_fusion_attention_layouts_agree_and_return_seven_outputs() -> None:
    B, N, S, D = 2, 4, 6, 8
    q, k, v = (
        rnd(B, N, S, D, dtype=torch.float32),
        rnd(B, N, S, D, dtype=torch.float32),
        rnd(B, N, S, D, dtype=torch.float32),
    )
    ref = ops.attention(q, k, v, scale=0.3)
    outs = sim.npu_fusion_attention(q, k, v, N, "BNSD", scale=0.3)
    assert len(outs) == 7 and outs[1].dtype == torch.float32 and outs[1].shape == (B, N, S, 8)
    assert close(outs[0], ref, 1e-5)
    bsnd = sim.npu_fusion_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), N, "BSND", scale=0.3)[0]
    bsh = sim.npu_fusion_attention(*(t.transpose(1, 2).reshape(B, S, N * D) for t in (q, k, v)), N, "BSH", scale=0.3)[0]
    sbh = sim.npu_fusion_attention(
        *(t.permute(2, 0, 1, 3).reshape(S, B, N * D) for t in (q, k, v)), N, "SBH", scale=0.3
    )[0]
    assert close(bsnd.transpose(1, 2), ref, 1e-5) and close(bsh.view(B, S, N, D).transpose(1, 2), ref, 1e-5)
    assert close(sbh.view(S, B, N, D).permute(1, 2, 0, 3), ref, 1e-5)


def test_scale_defaults_to_one_not_one_over_sqrt_d() -> None:
    q, k, v = (rnd(1, 2, 4, 16, dtype=torch.float32) for _ in range(3))
    out = sim.npu_fusion_attention(q, k, v, 2, "BNSD")[0]
    assert close(out, ops.attention(q, k, v, scale=1.0), 1e-5)
    assert not close(out, ops.attention(q, k, v), 1e-2)


def test_mask_true_means_masked_out_and_sparse_modes() -> None:
    B, N, Sq, Skv, D = 1, 2, 3, 5, 8
    q, k, v = (
        rnd(B, N, Sq, D, dtype=torch.float32),
        rnd(B, N, Skv, D, dtype=torch.float32),
        rnd(B, N, Skv, D, dtype=torch.float32),
    )
    visible = ops.visible_keys(Sq, Skv, causal=True)[:, None]  # bottom-right, [1, 1, Sq, Skv]
    ref = ops.attention(q, k, v, causal=True, scale=0.5)
    explicit = sim.npu_fusion_attention(q, k, v, N, "BNSD", atten_mask=~visible, scale=0.5)[0]
    assert close(explicit, ref, 1e-5)
    wrong = sim.npu_fusion_attention(q, k, v, N, "BNSD", atten_mask=visible, scale=0.5)[0]  # torch convention
    assert not close(wrong, ref, 1e-2)
    compressed = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
    mode3 = sim.npu_fusion_attention(q, k, v, N, "BNSD", atten_mask=compressed, scale=0.5, sparse_mode=3)[0]
    assert close(mode3, ref, 1e-5)  # rightDownCausal = the contract's bottom-right causal
    mode2 = sim.npu_fusion_attention(q, k, v, N, "BNSD", atten_mask=compressed, scale=0.5, sparse_mode=2)[0]
    top_left = ~torch.ones(Sq, Skv, dtype=torch.bool).triu(1)
    assert close(mode2, _masked_ref(q, k, v, top_left, 0.5), 1e-5)  # leftUpCausal: top-left alignment
    with pytest.raises(ValueError, match="2048x2048"):
        sim.npu_fusion_attention(q, k, v, N, "BNSD", atten_mask=~visible, sparse_mode=3)
    with pytest.raises(NotImplementedError, match="sparse_mode 6"):
        sim.npu_fusion_attention(q, k, v, N, "BNSD", atten_mask=compressed, sparse_mode=6)


def _masked_ref(q, k, v, visible: torch.Tensor, scale: float) -> torch.Tensor:
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~visible, float("-inf")), -1) @ v.double()


def test_pre_and_next_tokens_band() -> None:
    S = 6
    q, k, v = (rnd(1, 1, S, 8, dtype=torch.float32) for _ in range(3))
    no_mask = torch.zeros(S, S, dtype=torch.bool)
    out = sim.npu_fusion_attention(q, k, v, 1, "BNSD", atten_mask=no_mask, pre_tockens=2, next_tockens=1, scale=0.4)[0]
    i, j = torch.arange(S).view(-1, 1), torch.arange(S).view(1, -1)
    assert close(out, _masked_ref(q, k, v, (j >= i - 2) & (j <= i + 1), 0.4), 1e-5)
    # Mode 4: the band's origin moves to the bottom right (Skv - Sq).
    kk, vv = rnd(1, 1, 9, 8, dtype=torch.float32), rnd(1, 1, 9, 8, dtype=torch.float32)
    comp = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
    out = sim.npu_fusion_attention(
        q, kk, vv, 1, "BNSD", atten_mask=comp, sparse_mode=4, pre_tockens=2, next_tockens=0, scale=0.4
    )[0]
    ref = ops.attention(q, kk, vv, causal=True, window=3, scale=0.4)
    assert close(out, ref, 1e-5)


def test_tnd_takes_cumulative_lengths() -> None:
    lens_q, lens_kv = [2, 3], [4, 3]
    q = rnd(sum(lens_q), 2, 8, dtype=torch.float32)
    k, v = rnd(sum(lens_kv), 2, 8, dtype=torch.float32), rnd(sum(lens_kv), 2, 8, dtype=torch.float32)
    out = sim.npu_fusion_attention(q, k, v, 2, "TND", scale=0.5, actual_seq_qlen=[2, 5], actual_seq_kvlen=[4, 7])[0]
    first = ops.attention(
        q[:2].transpose(0, 1)[None], k[:4].transpose(0, 1)[None], v[:4].transpose(0, 1)[None], scale=0.5
    )
    assert close(out[:2], first[0].transpose(0, 1), 1e-5)
    with pytest.raises(ValueError, match="cumulative"):
        sim.npu_fusion_attention(q, k, v, 2, "TND", actual_seq_qlen=[2, 1], actual_seq_kvlen=[4, 7])


def test_no_float64_anywhere_and_no_float32_query_in_fia() -> None:
    x = torch.randn(1, 2, 4, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        sim.npu_fusion_attention(x, x, x, 2, "BNSD")
    with pytest.raises(TypeError, match="float64"):
        sim.npu_rms_norm(torch.randn(2, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        sim.npu_fused_infer_attention_score(x.float(), x.float(), x.float(), num_heads=2, input_layout="BNSD")


def test_fia_gqa_kv_lengths_and_decode() -> None:
    B, Nq, Nkv, Skv, D = 3, 8, 2, 10, 16
    q, k, v = rnd(B, Nq, 1, D), rnd(B, Nkv, Skv, D), rnd(B, Nkv, Skv, D)
    lens = [10, 4, 7]
    out, lse = sim.npu_fused_infer_attention_score(
        q, k, v, num_heads=Nq, num_key_value_heads=Nkv, input_layout="BNSD", scale=0.25, actual_seq_lengths_kv=lens
    )
    assert out.dtype == torch.float16 and lse.numel() == 1  # lse only with softmax_lse_flag
    ref = ops.attention(q, k, v, causal=True, scale=0.25, kv_lens=torch.tensor(lens))
    assert close(out, ref)
    _, lse = sim.npu_fused_infer_attention_score(
        q, k, v, num_heads=Nq, num_key_value_heads=Nkv, input_layout="BNSD", softmax_lse_flag=True
    )
    assert lse.shape == (B, Nq, 1, 1) and lse.dtype == torch.float32
    with pytest.raises(ValueError, match="actual_seq_lengths_kv"):  # paged KV (tests/test_paged.py) needs lengths
        table = torch.zeros(B, 1, dtype=torch.int32)
        sim.npu_fused_infer_attention_score(q, k, v, num_heads=Nq, input_layout="BNSD", block_table=table, block_size=8)


# ----- MoE -----


def test_gating_top_k_softmax_is_not_renormalized_and_row_idx_is_column_major() -> None:
    x = rnd(5, 8)
    y, idx, row = sim.npu_moe_gating_top_k_softmax(x, k=2)
    p = torch.softmax(x.float(), -1)
    assert idx.dtype == torch.int32 and y.dtype == x.dtype
    assert close(y, p.gather(1, idx.long()))
    assert row.tolist() == [[j * 5 + n for j in range(2)] for n in range(5)]


def test_gating_top_k_groups_bias_and_scaling_match_the_reference_router() -> None:
    x, bias = rnd(40, 16, dtype=torch.float32), 0.1 * torch.randn(16, generator=G)
    y, idx, _ = sim.npu_moe_gating_top_k(
        x, 4, bias=bias, k_group=2, group_count=4, group_select_mode=1, norm_type=1, routed_scaling_factor=2.5
    )
    spec = ops.RoutingSpec(top_k=4, scheme="sigmoid_group_topk", n_group=4, topk_group=2, scaling=2.5, renormalize=True)
    w, ids = ops.route(x, spec, bias=bias).tensors()
    assert torch.equal(idx.long().sort(-1).values, ids.sort(-1).values)
    assert close(y.gather(1, idx.long().argsort(-1)), w.gather(1, ids.argsort(-1)), 1e-5)
    by_max = sim.npu_moe_gating_top_k(x, 4, bias=bias, k_group=2, group_count=4, group_select_mode=0, norm_type=1)[1]
    assert not torch.equal(by_max.long().sort(-1).values, ids.sort(-1).values)  # the group rule matters here
    soft = sim.npu_moe_gating_top_k(x, 2, norm_type=0)[0]
    assert not torch.allclose(soft.sum(-1), torch.ones(40))  # softmax scores are not renormalized


def test_init_routing_v2_sorts_row_major_and_counts() -> None:
    x = torch.arange(3 * 2, dtype=torch.float16).view(3, 2)
    idx = torch.tensor([[2, 0], [0, 1], [2, 1]], dtype=torch.int32)  # sources n*K+k: 0:2 1:0 2:0 3:1 4:2 5:1
    expanded, row_idx, counts, scale = sim.npu_moe_init_routing_v2(
        x, idx, expert_num=3, expert_tokens_num_type=1, expert_tokens_num_flag=True
    )
    # Sorted by expert, stable in source order: sources 1, 2 (expert 0), 3, 5 (expert 1), 0, 4 (expert 2).
    assert torch.equal(expanded, x[torch.tensor([1, 2, 3, 5, 0, 4]) // 2])
    assert row_idx.tolist() == [4, 0, 1, 2, 5, 3] and row_idx.dtype == torch.int32
    assert counts.tolist() == [2, 2, 2] and scale is None
    cum = sim.npu_moe_init_routing_v2(x, idx, expert_num=3, expert_tokens_num_flag=True)[2]
    assert cum.tolist() == [2, 4, 6]
    with pytest.raises(NotImplementedError, match="drop / pad"):
        sim.npu_moe_init_routing_v2(x, idx, drop_pad_mode=1)


def test_grouped_matmul_group_list_types_and_garbage_rows() -> None:
    h, w = rnd(7, 4, dtype=torch.float32), rnd(3, 4, 5, dtype=torch.float32)
    counts = torch.tensor([2, 0, 3])
    out = sim.npu_grouped_matmul([h], [w], group_list=counts, split_item=2, group_type=0, group_list_type=1)[0]
    cum = sim.npu_grouped_matmul([h], [w], group_list=counts.cumsum(0), split_item=2, group_type=0)[0]
    assert torch.equal(out[:5], cum[:5])
    assert torch.allclose(out[:2], h[:2] @ w[0]) and torch.allclose(out[2:5], h[2:5] @ w[2])
    assert torch.isnan(out[5:]).all()  # rows past the groups' total are garbage: never read them


def test_swiglu_and_token_unpermute() -> None:
    x = rnd(3, 8, dtype=torch.float32)
    assert close(sim.npu_swiglu(x), ops.swiglu(x), 1e-6)
    permuted = rnd(6, 4, dtype=torch.float32)
    sorted_indices = torch.tensor([4, 0, 1, 2, 5, 3], dtype=torch.int32)
    probs = torch.rand(3, 2, generator=G)
    out = sim.npu_moe_token_unpermute(permuted, sorted_indices, probs=probs)
    expected = torch.stack([sum(probs[n, k] * permuted[sorted_indices[n * 2 + k]] for k in range(2)) for n in range(3)])
    assert torch.allclose(out, expected, atol=1e-6)


def test_rms_norm_rstd_and_rotary_modes() -> None:
    x, g = rnd(2, 3, 16, dtype=torch.bfloat16), rnd(16, dtype=torch.bfloat16)
    y, rstd = sim.npu_rms_norm(x, g, epsilon=1e-5)
    assert y.dtype == torch.bfloat16 and rstd.dtype == torch.float32 and rstd.shape == (2, 3, 1)
    assert close(y, ops.rms_norm(x, g, 1e-5), 1e-2)
    theta = torch.rand(5, 4)
    for mode, expand in (
        ("half", lambda t: torch.cat([t, t], -1)),
        ("interleave", lambda t: t.repeat_interleave(2, -1)),
    ):
        xr = rnd(2, 5, 8, dtype=torch.float32)
        got = sim.npu_rotary_mul(xr, expand(theta.cos()), expand(theta.sin()), rotary_mode=mode)
        assert close(got, ops.rope(xr, expand(theta.cos()), expand(theta.sin()), mode), 1e-6)


def test_event_timing_in_milliseconds() -> None:
    start, end = sim.npu.Event(enable_timing=True), sim.npu.Event(enable_timing=True)
    start.record()
    sum(range(100000))
    end.record()
    end.synchronize()
    assert 0 < start.elapsed_time(end) < 1000
    with pytest.raises(RuntimeError, match="enable_timing"):
        sim.npu.Event().elapsed_time(sim.npu.Event())


# ----- the adapter -----


def test_nothing_imports_torch_npu_at_import_time() -> None:
    code = (
        "import sys, harness, harness.cli, harness.runner, backends.ascend.adapter, backends.ascend.sim;"
        "from harness.backend import default_registry; default_registry();"
        "assert 'torch_npu' not in sys.modules, 'torch_npu imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ascend_is_listed_unavailable_with_the_import_failure(harness_cli) -> None:
    result = harness_cli("list")
    lines = result.output.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("│ ascend "))
    row = [lines[first]]
    for ln in lines[first + 1 :]:  # the row's wrapped cells: lines whose name cell is blank
        if not ln.startswith("│") or ln.split("│")[1].strip():
            break
        row.append(ln)
    cells = [[c.strip() for c in ln.split("│")[1:-1]] for ln in row]
    reason = " ".join(c[2] for c in cells if c[2])
    assert cells[0][1] == "unavailable" and "torch_npu not importable: ModuleNotFoundError" in reason
    from harness.backend import default_registry

    reason = default_registry().probe("ascend").reason
    assert reason == "torch_npu not importable: ModuleNotFoundError: No module named 'torch_npu'"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "workloads", "metric"),
    [
        ("bug-ascend-mask-not-inverted", "attention.*", "rel_l2"),
        # not attention.mla_decode: it always passes a scale (the model's), so leaving a missing one at 1.0 is right
        ("bug-ascend-default-scale", "attention.[pcds]*", "rel_l2"),
        # gqa: D == Dv goes through the fused-infer op, where the sparse mode applies
        ("bug-ascend-sparse-mode-2", "attention.chunked_prefill,attention.decode", "rel_l2"),
    ],
)
def test_planted_adapter_mistakes_fail_parity(harness_cli, backend: str, workloads: str, metric: str) -> None:
    from tests.conftest import FAULTS

    dtypes = "float32" if backend == "bug-ascend-mask-not-inverted" else "float16,bfloat16"
    shapes = ("--shape", "gqa") if backend == "bug-ascend-sparse-mode-2" else ()
    run = harness_cli(
        "run", "--plugin", FAULTS, "-b", backend, "-w", workloads, "--dtype", dtypes, *shapes, "--parity-only"
    )
    assert run.exit_code == 1
    assert {r["status"] for r in run.records} == {"failed"}
    assert all(metric in r["reason"] for r in run.records)


@pytest.mark.slow
def test_ascend_sim_passes_the_ci_suite_in_half_precision(harness_cli) -> None:
    run = harness_cli(
        "run", "--suite", "ci", "-b", "ascend-sim", "--dtype", "float16,bfloat16", "--seeds", "0", "--parity-only"
    )
    assert run.exit_code == 0, run.output
    assert {r["case"]["workload"].split(".")[0] for r in run.records} == {"attention", "moe", "llm", "dist", "linear"}
    f32 = harness_cli("run", "-w", "attention.*", "-b", "ascend-sim", "--dtype", "float32", "--parity-only")
    assert f32.exit_code == 0  # float32 goes through npu_fusion_attention (FIA rejects float32 queries)
    assert all(r["simulated"] for r in run.records)
