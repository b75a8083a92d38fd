"""The CUDA MoE layer's fused steps (backends/cuda/moe_route*.py, fused.py) against their pure-torch twins, and the
twins against harness.ops' reference routing. The torch forms run everywhere (CI); the Triton kernels run here
under the Triton interpreter on CPU tensors when triton imports, and on a GPU for real (scripts/gpu_check_issue22.sh).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch

from harness import ops, parity
from harness.backends.cuda import fused, moe_route, moe_route_kernels
from harness.backends.cuda.moe import GroupedMoe

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (the kernels' tests need triton)")

SOFTMAX = ops.RoutingSpec(top_k=4, scheme="softmax_topk", renormalize=True)
# (spec, experts): softmax with and without renormalizing (E not a power of two: Qwen2-MoE's 60), DeepSeek-V3's
# grouped sigmoid (bias, groups, scaling), a group count that is not a power of two, no groups at all.
SPECS = {
    "softmax-renorm": (SOFTMAX, 16),
    "softmax-60-experts": (ops.RoutingSpec(top_k=6, scheme="softmax_topk", renormalize=False), 60),
    "deepseek-groups": (
        ops.RoutingSpec(top_k=8, scheme="sigmoid_group_topk", n_group=8, topk_group=4, scaling=2.5, renormalize=True),
        64,
    ),
    "sigmoid-3-groups": (
        ops.RoutingSpec(top_k=4, scheme="sigmoid_group_topk", n_group=3, topk_group=2, scaling=1.5, renormalize=True),
        12,
    ),
    "sigmoid-ungrouped": (ops.RoutingSpec(top_k=2, scheme="sigmoid_group_topk", renormalize=False), 8),
}


def _logits(name: str, T: int = 37, *, near_ties: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random [T, E] float32 logits with near-ties planted: equal pairs and pairs 1 ulp apart among the leaders."""
    spec, E = SPECS[name]
    g = torch.Generator().manual_seed(len(name))
    logits = torch.randn(T, E, generator=g)
    if near_ties:
        top = logits.argsort(dim=1, descending=True)  # [T, E]
        rows = torch.arange(T)
        a, b = top[:, 0], top[rows, 1 + rows % 3]  # the leader and one of the next three
        logits[rows[::3], b[::3]] = logits[rows[::3], a[::3]]  # exact ties
        up = torch.nextafter(logits[rows, a], torch.tensor(float("inf")))
        logits[rows[1::3], b[1::3]] = up[1::3]  # 1 ulp above the leader
        down = torch.nextafter(logits[rows, a], torch.tensor(float("-inf")))
        logits[rows[2::3], b[2::3]] = down[2::3]  # 1 ulp below
    bias = None
    if spec.scheme == "sigmoid_group_topk":
        bias = (torch.randn(E, generator=g) * 0.05).round(decimals=2)  # repeated values: ties survive the bias
    return logits, bias


def _stable_reference(logits: torch.Tensor, spec: ops.RoutingSpec, bias: torch.Tensor | None) -> ops.Routing:
    return ops.route(logits.double(), spec, bias=None if bias is None else bias.double())


def _check_order(perm: moe_route.Permuted, ids: torch.Tensor, x: torch.Tensor) -> None:
    """From the definition: slots grouped by expert, token order within an expert (a stable sort), counts exact."""
    k = ids.shape[1]
    flat = ids.reshape(-1).long()
    E = perm.counts.numel()
    assert torch.equal(perm.counts.long(), torch.bincount(flat, minlength=E))
    assert torch.equal(perm.offs.long(), torch.bincount(flat, minlength=E).cumsum(0))
    order = torch.empty_like(perm.slot_of)
    order[perm.slot_of] = torch.arange(flat.numel())  # grouped row -> token slot
    assert torch.equal(flat[order], flat[order].sort().values)  # grouped by expert, ascending
    same = flat[order][1:] == flat[order][:-1]
    assert bool((order[1:][same] > order[:-1][same]).all())  # within an expert: the slots' own order
    assert torch.equal(perm.xs, x[order // k])


# ----- the torch forms against the reference (CI) -----


@pytest.mark.parametrize("name", list(SPECS))
def test_torch_routing_chooses_the_references_ids_on_near_ties(name: str) -> None:
    spec, _ = SPECS[name]
    logits, bias = _logits(name)
    routed = moe_route.route_torch(logits, spec, bias)
    ref = _stable_reference(logits, spec, bias)
    assert torch.equal(routed.ids, ref.ids)  # the same experts in the same (best-first) order
    assert torch.allclose(routed.weights.double(), ref.weights, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(SPECS))
def test_torch_permutation_is_a_stable_sort_by_expert(name: str) -> None:
    spec, E = SPECS[name]
    logits, bias = _logits(name)
    x = torch.randn(logits.shape[0], 24)
    routed = moe_route.route_torch(logits, spec, bias)
    _check_order(moe_route.permute(x, routed, E), routed.ids, x)


def test_groups_are_ranked_by_the_sum_of_their_top_two_not_their_maximum() -> None:
    """Group 0 holds the single best expert; group 1 two nearly as good: DeepSeek-V3 keeps group 1."""
    spec = ops.RoutingSpec(top_k=2, scheme="sigmoid_group_topk", n_group=2, topk_group=1, renormalize=True)
    logits = torch.tensor([[4.0, -3.0, -3.0, -3.0, 2.0, 2.0, -3.0, -3.0]])
    ref = _stable_reference(logits, spec, None)
    assert ref.ids.tolist() == [[4, 5]]
    assert moe_route.route_torch(logits, spec, None).ids.tolist() == [[4, 5]]


@pytest.mark.parametrize("scheme", ["softmax_topk", "sigmoid_group_topk"])
def test_torch_layer_routes_like_the_reference_and_matches_its_output(scheme: str) -> None:
    name = "softmax-renorm" if scheme == "softmax_topk" else "deepseek-groups"
    spec, E = SPECS[name]
    T, H, F = 40, 32, 16
    g = torch.Generator().manual_seed(11)
    x, router_w = torch.randn(T, H, generator=g), torch.randn(E, H, generator=g) * 0.3
    w = [torch.randn(E, F, H, generator=g) * H**-0.5 for _ in range(2)] + [torch.randn(E, H, F, generator=g) * F**-0.5]
    bias = _logits(name)[1]
    layer = GroupedMoe()
    out, routing = layer.routed_layer(x, x @ router_w.T, tuple(w), spec, bias=bias)
    ref_out, ref_routing = ops.moe(x, router_w, *w, spec, bias=bias)
    assert torch.equal(routing.ids, ref_routing.ids)
    budget = parity.budget_for("float32", E)
    assert parity.judge(parity.compare(out, ref_out, budget), budget).passed


# ----- the Triton kernels against the torch forms (interpreter on CPU; a GPU for real) -----


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernels built under TRITON_INTERPRET=1 (on CPU tensors), and rebuilt normally afterwards."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    moe_route_kernels.kernels.cache_clear()
    fused._kernels.cache_clear()
    yield
    moe_route_kernels.kernels.cache_clear()
    fused._kernels.cache_clear()


@needs_triton
@pytest.mark.usefixtures("interpreted")
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("name", list(SPECS))
def test_route_and_permute_kernels_match_the_torch_forms(name: str, T: int) -> None:
    spec, E = SPECS[name]
    logits, bias = _logits(name, T)
    x = torch.randn(T, 24)
    want = moe_route.route_torch(logits, spec, bias)
    got = moe_route.route_triton(logits, spec, bias)
    assert torch.equal(got.ids.long(), want.ids)  # near-ties included: the reference's stable choice
    assert torch.allclose(got.weights, want.weights, rtol=1e-6, atol=1e-7)
    want_perm, got_perm = moe_route.permute(x, want, E), moe_route.permute(x, got, E)
    for field in ("counts", "offs", "slot_of", "xs"):
        assert torch.equal(getattr(got_perm, field).long(), getattr(want_perm, field).long()), field
    _check_order(got_perm, got.ids, x)


@needs_triton
@pytest.mark.usefixtures("interpreted")
def test_a_given_routing_is_counted_and_ordered_like_the_torch_form() -> None:
    """Every expert used (the last one most: its count must be exact), one expert never used; T not a block."""
    T, E, k = 53, 12, 3
    ids = torch.stack([torch.arange(T) % 11, (torch.arange(T) + 4) % 11, torch.full((T,), E - 1)], dim=1)
    routing = ops.Routing(torch.rand(T, k), ids)
    x = torch.randn(T, 16)
    got = moe_route.permute(x, moe_route.given(routing, x, E, True), E)
    want = moe_route.permute(x, moe_route.given(routing, x, E, False), E)
    for field in ("counts", "offs", "slot_of", "xs"):
        assert torch.equal(getattr(got, field).long(), getattr(want, field).long()), field
    _check_order(got, ids, x)


@needs_triton
@pytest.mark.usefixtures("interpreted")
def test_the_kernels_rank_groups_by_the_sum_of_their_top_two() -> None:
    spec = ops.RoutingSpec(top_k=2, scheme="sigmoid_group_topk", n_group=2, topk_group=1, renormalize=True)
    logits = torch.tensor([[4.0, -3.0, -3.0, -3.0, 2.0, 2.0, -3.0, -3.0]])
    assert moe_route.route_triton(logits, spec, None).ids.tolist() == [[4, 5]]


@needs_triton
@pytest.mark.usefixtures("interpreted")
def test_swiglu_and_combine_kernels_match_the_torch_forms() -> None:
    g = torch.Generator().manual_seed(4)
    h = torch.randn(9, 2 * 40, generator=g)
    assert torch.allclose(fused.swiglu_rows(h, 40, True), fused.swiglu_rows(h, 40, False), rtol=1e-5, atol=1e-6)
    T, k, H = 6, 3, 33
    y = torch.randn(T * k, H, generator=g)
    slot_of = torch.randperm(T * k, generator=g)
    w = torch.rand(T, k, generator=g)
    got = fused.combine_rows(y, slot_of, w, torch.float32, True)
    assert torch.allclose(got, fused.combine_rows(y, slot_of, w, torch.float32, False), rtol=1e-5, atol=1e-6)


@needs_triton
@pytest.mark.usefixtures("interpreted")
@pytest.mark.parametrize("scheme", ["softmax_topk", "sigmoid_group_topk"])
def test_the_fused_layer_matches_the_torch_layer(scheme: str) -> None:
    name = "softmax-renorm" if scheme == "softmax_topk" else "deepseek-groups"
    spec, E = SPECS[name]
    T, H, F = 24, 32, 16
    g = torch.Generator().manual_seed(12)
    x, router_w = torch.randn(T, H, generator=g), torch.randn(E, H, generator=g) * 0.3
    w = tuple([torch.randn(E, F, H, generator=g) * H**-0.5 for _ in range(2)] + [torch.randn(E, H, F, generator=g)])
    shared = ops.SharedExpert(torch.randn(8, H, generator=g), torch.randn(8, H, generator=g), torch.randn(H, 8))
    bias = _logits(name)[1]
    plain, kernels = GroupedMoe(), GroupedMoe()
    kernels.interpret = True
    want, want_routing = plain.routed_layer(x, x @ router_w.T, w, spec, bias=bias, shared=shared)
    got, got_routing = kernels.routed_layer(x, x @ router_w.T, w, spec, bias=bias, shared=shared)
    assert "triton route/permute/swiglu/combine" in kernels.path and "triton" not in plain.path
    assert torch.equal(got_routing.ids, want_routing.ids)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


# ----- the compiled kernels on a GPU (scripts/gpu_check_issue22.sh) -----


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA GPU")
@pytest.mark.parametrize("name", list(SPECS))
def test_compiled_kernels_match_the_torch_forms_on_the_gpu(name: str) -> None:
    spec, E = SPECS[name]
    logits, bias = (t.cuda() if t is not None else None for t in _logits(name, 301))
    x = torch.randn(301, 520, device="cuda", dtype=torch.bfloat16)
    want, got = moe_route.route_torch(logits, spec, bias), moe_route.route_triton(logits, spec, bias)
    assert torch.equal(got.ids.long(), want.ids)
    assert torch.allclose(got.weights, want.weights, rtol=1e-6, atol=1e-7)
    want_perm, got_perm = moe_route.permute(x, want, E), moe_route.permute(x, got, E)
    for field in ("counts", "offs", "slot_of", "xs"):
        assert torch.equal(getattr(got_perm, field).long(), getattr(want_perm, field).long()), field


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA GPU")
def test_the_fused_layer_with_a_side_stream_shared_expert_replays_in_a_cuda_graph() -> None:
    spec, E = SPECS["deepseek-groups"]
    T, H, F = 256, 128, 64
    g = torch.Generator("cuda").manual_seed(3)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(torch.bfloat16)

    x, router_w = r(T, H), r(E, H, scale=0.3)
    w = (r(E, F, H, scale=H**-0.5), r(E, F, H, scale=H**-0.5), r(E, H, F, scale=F**-0.5))
    shared = ops.SharedExpert(r(F, H, scale=H**-0.5), r(F, H, scale=H**-0.5), r(H, F, scale=F**-0.5))
    bias = torch.randn(E, device="cuda", generator=g) * 0.01
    layer = GroupedMoe()
    eager, routing = layer.routed_layer(x, x @ router_w.T, w, spec, bias=bias, shared=shared)
    assert "triton route/permute/swiglu/combine" in layer.path and "side stream" in layer.path
    ref, _ = ops.moe(x, router_w, *w, spec, bias=bias, shared=shared, routing=routing)
    budget = parity.budget_for("bfloat16", E)
    assert parity.judge(parity.compare(eager.cpu(), ref, budget), budget).passed
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer.routed_layer(x, x @ router_w.T, w, spec, bias=bias, shared=shared)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, _ = layer.routed_layer(x, x @ router_w.T, w, spec, bias=bias, shared=shared)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


def test_the_bar_scripts_dry_run_times_every_step_on_the_cpu() -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "cuda_bar.py"), "--dry-run"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    steps = {r["impl"].split(": ", 1)[1].split(" ")[0] for r in rows if r["impl"].startswith("step: ")}
    assert steps == {"routing", "permute", "GEMM1", "SwiGLU", "GEMM2", "combine", "shared"}
    assert rows[0]["shape_ok"] and all(r["ms"] > 0 for r in rows)
