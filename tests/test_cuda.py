"""The CUDA backend: its dispatch logic and fused fallbacks run here on the CPU (SDPA's math and CPU flash kernels,
torch._grouped_mm on the CPU); what needs a GPU (flash's own causal / window modes, cuDNN, Triton, CUDA timing)
skips here with a reason and was run on an H100 (results/cuda/)."""

from __future__ import annotations

import pytest
import torch

from harness import ops, parity
from harness.backend import UnsupportedCaseError
from harness.backends.cuda.attention import SdpaAttention, mask_kind
from harness.backends.cuda.fused import combine_rows, swiglu_rows
from harness.backends.cuda.moe import GroupedMoe
from harness.backends.torch_cpu import TorchCpu

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")

# (B, Hq, Hkv, Sq, Skv, D, Dv, causal, window, kv_lens): every mask kind, GQA / MQA, D != Dv, empty rows.
CASES = {
    "prefill-gqa": (2, 4, 2, 16, 16, 32, 32, True, None, None),
    "chunked-ragged": (2, 4, 2, 16, 64, 32, 32, True, None, (64, 40)),
    "decode-mqa-dv": (2, 4, 1, 1, 64, 32, 16, True, None, (64, 23)),
    "window": (2, 4, 2, 64, 64, 32, 32, True, 16, None),
    "window-decode": (3, 4, 2, 1, 64, 32, 32, True, 16, (64, 23, 9)),  # attention.sliding_window's decode shapes
    "window-chunked": (2, 4, 2, 16, 64, 32, 32, True, 16, (64, 40)),
    "lower-right": (2, 4, 2, 16, 64, 32, 32, True, None, None),
    "empty-sequence": (2, 4, 2, 16, 64, 32, 32, False, None, (64, 0)),
    "more-queries-than-keys": (2, 4, 2, 20, 8, 32, 32, True, None, None),
    "ragged-shorter-than-queries": (2, 4, 2, 16, 32, 32, 32, True, None, (32, 9)),
}


def _inputs(case: tuple) -> tuple[torch.Tensor, ...]:
    B, Hq, Hkv, Sq, Skv, D, Dv, *_ = case
    g = torch.Generator().manual_seed(3)
    return (
        torch.randn(B, Hq, Sq, D, generator=g),
        torch.randn(B, Hkv, Skv, D, generator=g),
        torch.randn(B, Hkv, Skv, Dv, generator=g),
    )


def _kwargs(case: tuple) -> dict:
    *_, causal, window, lens = case
    return {"causal": causal, "window": window, "kv_lens": torch.tensor(lens) if lens else None}


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def test_mask_kinds() -> None:
    assert mask_kind(8, 8, causal=True, window=None) == "causal"
    assert mask_kind(1, 64, causal=True, window=None) == "full"  # decode sees every key: no mask needed
    assert mask_kind(8, 64, causal=True, window=None) == "lower_right"  # NOT sdpa is_causal (top-left)
    assert mask_kind(8, 64, causal=False, window=None) == "full"
    assert mask_kind(8, 8, causal=True, window=4) == "mask"
    assert mask_kind(9, 8, causal=True, window=None) == "mask"


@pytest.mark.parametrize("split", [False, True], ids=["batched", "split"])
@pytest.mark.parametrize("name", list(CASES))
def test_dispatch_matches_the_reference(name: str, split: bool) -> None:
    """Both ragged strategies (one masked batch; per-sequence slices of the cache) compute the contract."""
    case = CASES[name]
    q, k, v = _inputs(case)
    kw = _kwargs(case)
    attn = SdpaAttention(("math",))
    lens = tuple(case[-1]) if case[-1] else None
    out = attn._run("math", split and lens is not None, q, k, v, kw["causal"], kw["window"], None, lens)
    ref = ops.attention(q, k, v, **kw)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-5
    empty = ~ops.visible_keys(q.shape[2], k.shape[2], batch=q.shape[0], **kw).any(-1)  # [B, Sq]
    assert torch.equal(out.permute(0, 2, 1, 3)[empty], torch.zeros_like(out.permute(0, 2, 1, 3)[empty]))


@pytest.mark.parametrize("name", list(CASES))
def test_auto_tuning_picks_a_correct_kernel_and_records_what_it_tried(name: str) -> None:
    case = CASES[name]
    q, k, v = _inputs(case)
    kw = _kwargs(case)
    attn = SdpaAttention(("flash", "math"))  # CPU flash where it takes the case, else math
    out = attn(q, k, v, **kw)
    assert _rel(out, ops.attention(q, k, v, **kw)) < 1e-5
    assert attn.last is not None and attn.last.kernel in ("flash", "math")
    assert any(label.startswith(f"{attn.last.kernel}/") for label in attn.last.tried)
    assert len(attn.choices) == 1
    attn(q, k, v, **kw)
    assert len(attn.choices) == 1  # decided once per shape signature


def test_a_pinned_kernel_that_refuses_is_an_unsupported_case_naming_why() -> None:
    q, k, v = _inputs(CASES["prefill-gqa"])
    with pytest.raises(UnsupportedCaseError, match="efficient"):
        SdpaAttention(("efficient",))(q, k, v, causal=True)  # no memory-efficient kernel on the CPU


def test_host_lengths_are_reread_after_an_in_place_change() -> None:
    case = CASES["chunked-ragged"]
    q, k, v = _inputs(case)
    lens = torch.tensor([64, 40])
    attn = SdpaAttention(("math",))
    attn(q, k, v, causal=True, kv_lens=lens)
    lens[1] = 17  # bumps the version counter: the memo must not serve (64, 40)
    out = attn(q, k, v, causal=True, kv_lens=lens)
    assert _rel(out, ops.attention(q, k, v, causal=True, kv_lens=lens)) < 1e-5


def _moe_inputs(dtype: torch.dtype, scheme: str) -> tuple[list[torch.Tensor], dict]:
    T, H, F, E = 48, 64, 32, 8
    g = torch.Generator().manual_seed(5)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    args = [
        r(T, H),
        r(E, H, scale=0.2),
        r(E, F, H, scale=H**-0.5),
        r(E, F, H, scale=H**-0.5),
        r(E, H, F, scale=F**-0.5),
    ]
    shared = [r(40, H, scale=H**-0.5), r(40, H, scale=H**-0.5), r(H, 40, scale=40**-0.5)]
    if scheme == "sigmoid_group_topk":
        spec = ops.RoutingSpec(top_k=2, scheme=scheme, n_group=4, topk_group=2, scaling=2.5, renormalize=True)
        kw: dict = {"spec": spec, "bias": torch.randn(E, generator=g) * 0.1, "shared": ops.SharedExpert(*shared)}
    else:
        spec = ops.RoutingSpec(top_k=2, scheme=scheme, renormalize=True)
        kw = {"spec": spec, "shared": ops.SharedExpert(*shared, gate=r(1, H, scale=H**-0.5))}
    return args, kw


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("scheme", ["softmax_topk", "sigmoid_group_topk"])
def test_grouped_moe_matches_the_reference_under_its_own_routing(scheme: str, dtype: torch.dtype) -> None:
    args, kw = _moe_inputs(dtype, scheme)
    moe = GroupedMoe()
    given = TorchCpu().route((args[0] @ args[1].T).float(), kw["spec"], bias=kw.get("bias"))
    out = moe(args[0], *args[2:], given, shared=kw["shared"])
    ref, routing = ops.moe(*args, **kw, routing=given)
    budget = parity.budget_for("float32" if dtype == torch.float32 else "bfloat16", 64)
    assert parity.judge(parity.compare(out, ref, budget), budget).passed
    assert moe.path.startswith(("grouped_mm", "expert_loop"))
    # The reference's own routing agrees with the routing the layer applied (float32: exactly).
    if dtype == torch.float32:
        ref_ids = ops.route(args[0].double() @ args[1].double().T, kw["spec"], bias=kw.get("bias")).ids
        assert torch.equal(routing.ids.sort(-1).values, ref_ids.sort(-1).values)


def test_grouped_moe_honours_a_forced_routing_and_lays_weights_out_once() -> None:
    args, kw = _moe_inputs(torch.float32, "softmax_topk")
    T = args[0].shape[0]
    ids = torch.stack([torch.arange(T) % 8, (torch.arange(T) + 3) % 8], dim=1)  # [T, 2], every expert used
    forced = ops.Routing(torch.rand(T, 2), ids)
    moe = GroupedMoe()
    out = moe(args[0], *args[2:], forced, shared=kw["shared"])
    ref, _ = ops.moe(*args, **kw, routing=forced)
    assert _rel(out, ref) < 1e-5
    first = moe.layout(args[2], args[3], args[4], kw["shared"])
    assert moe.layout(args[2], args[3], args[4], kw["shared"]) is first  # cached, not rebuilt per call
    args[3].mul_(2.0)  # an in-place change to the up projection invalidates it
    assert moe.layout(args[2], args[3], args[4], kw["shared"]) is not first
    out2 = moe(args[0], *args[2:], forced, shared=kw["shared"])
    assert _rel(out2, ops.moe(*args, **kw, routing=forced)[0]) < 1e-5


def test_fused_fallbacks_compute_swiglu_and_the_weighted_combine() -> None:
    g = torch.Generator().manual_seed(2)
    h = torch.randn(10, 12, generator=g)
    assert torch.allclose(swiglu_rows(h, 6, False), torch.nn.functional.silu(h[:, :6]) * h[:, 6:])
    T, k, H = 5, 3, 7
    y = torch.randn(T * k, H, generator=g)  # rows in some permuted (expert) order
    perm = torch.randperm(T * k, generator=g)
    slot_of = torch.empty_like(perm)
    slot_of[perm] = torch.arange(T * k)
    w = torch.rand(T, k, generator=g)
    expected = torch.stack([sum(w[t, j] * y[slot_of[t * k + j]] for j in range(k)) for t in range(T)])
    assert torch.allclose(combine_rows(y, slot_of, w, torch.float32, False), expected, atol=1e-6)


def test_cuda_backends_are_listed_unavailable_with_a_reason_on_a_cpu_machine(registry) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for name in ("cuda", "cuda-cudnn", "cuda-flash", "cuda-efficient", "cuda-math"):
        availability = registry.probe(name)
        assert not availability.available
        assert "CPU-only build" in availability.reason or "sees no GPU" in availability.reason


# ----- on a GPU only -----


@needs_gpu
def test_gpu_timer_replays_a_graph_and_falls_back_to_events_for_a_host_sync() -> None:
    from harness.backends.cuda.backend import Cuda
    from harness.timing import TimingConfig, measure

    backend = Cuda()
    x = torch.randn(1024, device="cuda")
    config = TimingConfig(budget_s=0.02, warmup_s=0.005, min_samples=3)
    assert measure(lambda: x * 2, backend.timer(config), config).method == "cuda_graph"
    synced = measure(lambda: (x * 2).sum().item(), backend.timer(config), config)
    assert synced.method == "cuda_events" and "graph_error" in synced.notes
    cold = measure(lambda: x * 2, Cuda(cold_cache=True).timer(config), config)
    assert cold.calls_per_sample == 1 and cold.notes["cold_cache"] is True
    events = measure(lambda: x * 2, Cuda(graphs=False).timer(config), config)
    assert events.method == "cuda_events" and "graph_error" not in events.notes


@needs_gpu
@pytest.mark.parametrize("name", ["lower-right", "window", "chunked-ragged", "window-decode", "window-chunked"])
def test_flash_native_modes_are_bottom_right_aligned(name: str) -> None:
    case = CASES[name]
    q, k, v = (t.to("cuda", torch.bfloat16) for t in _inputs(case))
    kw = _kwargs(case)
    attn = SdpaAttention(("flash",))
    out = attn(q, k, v, **{**kw, "kv_lens": kw["kv_lens"].cuda() if kw["kv_lens"] is not None else None})
    ref = ops.attention(q.cpu(), k.cpu(), v.cpu(), **kw)
    assert _rel(out.cpu(), ref) < 2e-2


@needs_gpu
def test_tf32_is_a_backend_option_the_record_keeps(harness_cli) -> None:
    case = ("-b", "cuda", "-w", "attention.prefill", "--shape", "gqa", "--dtype", "float32", "--parity-only")
    on = harness_cli("run", *case, "--distribution", "normal", "--allow-tf32")
    assert on.exit_code in (0, 1), on.output
    assert all(r["implementation"]["tf32"] is True and r["environment"]["backend"]["tf32"] is True for r in on.records)
    off = harness_cli("run", *case, "--distribution", "normal", "--allow-tf32", "--backend-option", "cuda:tf32=0")
    assert off.exit_code == 0, off.output
    assert all(r["implementation"]["tf32"] is False for r in off.records)
