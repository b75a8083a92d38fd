"""The MoE reference (harness.ops.route / moe) against hand-worked routing, per-token loops, and transformers'
own MoE blocks run in float64 on the same weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness import ops
from harness.models.hf_moe import build_block, contract_inputs, load_contract_inputs
from harness.models.moe import TINY, MoeShape, _weights
from harness.op_types import moe_inputs, moe_kwargs
from harness.ops import Routing, RoutingSpec, SharedExpert
from harness.workload import WorkloadRegistry

WORKLOADS = WorkloadRegistry.discover()

transformers = pytest.importorskip("transformers", reason="transformers (the llm/test extra) is not installed")


def test_softmax_topk_renormalize_and_exact_tie_goes_to_the_lower_index() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    w, ids = ops.route(logits, RoutingSpec(top_k=2, scheme="softmax_topk", renormalize=True)).tensors()
    assert ids.tolist() == [[1, 2], [0, 1]]  # exact ties: lower expert index first
    torch.testing.assert_close(w, torch.full((2, 2), 0.5, dtype=torch.float64))
    w = ops.route(logits, RoutingSpec(top_k=2, scheme="softmax_topk", renormalize=False)).weights
    p = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(w[0], p[0, [1, 2]])


def test_deepseek_groups_rank_by_top2_sum_bias_selects_only_and_weights_scale() -> None:
    # 8 experts in 4 groups of 2; keep 2 groups; top-2 inside them.
    logits = torch.tensor([[3.0, -2.0, 1.0, 1.0, 0.0, 0.0, 2.0, -4.0]])
    s = torch.sigmoid(logits.double())[0]  # 0.95 0.12 | 0.73 0.73 | 0.5 0.5 | 0.88 0.02
    sums = torch.stack([s[0] + s[1], s[2] + s[3], s[4] + s[5], s[6] + s[7]])  # 1.07, 1.46, 1.0, 0.90
    assert set(sums.argsort(descending=True)[:2].tolist()) == {0, 1}
    # Ranked by max instead, group 3 (0.88) would beat group 1 (0.73): the rule matters here.
    spec = RoutingSpec(top_k=2, scheme="sigmoid_group_topk", n_group=4, topk_group=2, scaling=2.5, renormalize=True)
    w, ids = ops.route(logits, spec).tensors()
    assert ids.tolist() == [[0, 2]]  # experts 2 and 3 tie exactly: the lower index wins
    torch.testing.assert_close(w[0], 2.5 * s[[0, 2]] / s[[0, 2]].sum())
    # A bias large enough to move selection changes WHICH experts, never the weights' source.
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0])
    w, ids = ops.route(logits, replace(spec, scaling=1.0, renormalize=False), bias=bias).tensors()
    assert ids.tolist() == [[3, 0]]
    torch.testing.assert_close(w[0], s[[3, 0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(top_k=1, scheme="topk_softmax"), "scheme 'topk_softmax' is not one of: softmax_topk, sigmoid_group_topk"),
        (dict(top_k=0, scheme="softmax_topk"), "top_k must be an integer >= 1, got 0"),
        (dict(top_k=2.0, scheme="softmax_topk"), "top_k must be an integer >= 1, got 2.0"),
        (dict(top_k=1, scheme="sigmoid_group_topk", n_group=0), "n_group must be an integer >= 1, got 0"),
        (
            dict(top_k=1, scheme="sigmoid_group_topk", n_group=2, topk_group=3),
            r"topk_group must lie in \[1, n_group=2\]",
        ),
        (dict(top_k=1, scheme="softmax_topk", scaling=float("nan")), "scaling must be a finite number, got nan"),
        (dict(top_k=1, scheme="softmax_topk", renormalize=1), "renormalize must be True or False, got 1"),
    ],
)
def test_routing_spec_refuses_what_it_can_check_alone(kwargs: dict, message: str) -> None:
    """Without a tensor: at construction, so a bad spec fails where it is written, not inside a backend."""
    with pytest.raises(ops.ContractError, match=message):
        RoutingSpec(**{"renormalize": True, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(top_k=5, scheme="softmax_topk"), r"top_k must lie in \[1, 4\], got 5"),
        (dict(top_k=1, scheme="sigmoid_group_topk", n_group=3), "n_group=3 must divide the 4 experts"),
        (dict(top_k=3, scheme="sigmoid_group_topk", n_group=2, topk_group=1), "top_k=3 exceeds the 2 experts"),
        (dict(top_k=1, scheme="sigmoid_group_topk", n_group=4), "need >= 2 experts each"),
    ],
)
def test_routing_spec_checks_against_the_expert_count(kwargs: dict, message: str) -> None:
    spec = RoutingSpec(renormalize=True, **kwargs)  # valid on its own
    with pytest.raises(ops.ContractError, match=message):
        spec.check(4)
    with pytest.raises(ops.ContractError, match=message):
        ops.route(torch.zeros(2, 4), spec)


def test_route_contract_errors_on_tensors() -> None:
    spec = RoutingSpec(top_k=1, scheme="softmax_topk", renormalize=True)
    with pytest.raises(ops.ContractError, match="only defined for sigmoid_group_topk"):
        ops.route(torch.zeros(2, 4), spec, bias=torch.zeros(4))
    with pytest.raises(ops.ContractError, match=r"route input bias: expected shape \[4\], got \[3\]"):
        ops.route(torch.zeros(2, 4), replace(spec, scheme="sigmoid_group_topk"), bias=torch.zeros(3))
    with pytest.raises(ops.ContractError, match=r"route input logits: expected 2 dims \[T, E\]"):
        ops.route(torch.zeros(4), spec)


def test_moe_returns_the_routing_it_applied_and_a_given_one_as_is() -> None:
    shape = MoeShape(t=12, dims=TINY["deepseek-v3"])
    t = _weights(shape, torch.float32, seed=4, distribution="normal")
    args = [t[n] for n in ("x", "router_w", "w_gate", "w_up", "w_down")]
    spec, bias = shape.dims.spec, t["bias"]
    out, applied = ops.moe(*args, spec, bias=bias)
    free = ops.route(t["x"].double() @ t["router_w"].double().T, spec, bias=bias)
    assert torch.equal(applied.ids, free.ids) and torch.equal(applied.weights, free.weights)
    given = Routing(free.weights.flip(-1).float(), free.ids.flip(-1))  # same sets, another slot order
    again, returned = ops.moe(*args, spec, bias=bias, routing=given)
    assert returned is given
    torch.testing.assert_close(again, out, rtol=1e-6, atol=1e-6)  # the float32 weights alone differ
    other = Routing(given.weights, (given.ids + 1) % shape.dims.e)
    moved, returned = ops.moe(*args, spec, bias=bias, routing=other)
    assert returned is other and not torch.allclose(moved, out, rtol=0.05, atol=0.05)


def test_flat_input_names_pack_into_the_contract_values() -> None:
    w = {n: torch.zeros(2, 2) for n in ("shared_w_gate", "shared_w_up", "shared_w_down", "shared_gate")}
    packed = moe_kwargs({**w, "route_weights": torch.ones(3, 2), "route_ids": torch.zeros(3, 2, dtype=torch.long)})
    assert isinstance(packed["shared"], SharedExpert) and packed["shared"].gate is w["shared_gate"]
    assert isinstance(packed["routing"], Routing) and "bias" not in packed
    assert list(moe_inputs(None, packed["shared"], packed["routing"])) == [*w, "route_weights", "route_ids"]
    with pytest.raises(ops.ContractError, match="moe: shared_gate needs a shared expert"):
        moe_kwargs({"shared_gate": torch.zeros(1, 2)})
    with pytest.raises(ops.ContractError, match=r"a shared expert needs .*; missing shared_w_down"):
        moe_kwargs({"shared_w_gate": torch.zeros(2, 2), "shared_w_up": torch.zeros(2, 2)})
    with pytest.raises(ops.ContractError, match="missing route_ids"):
        moe_kwargs({"route_weights": torch.ones(3, 2)})


def per_token_moe(x, router_w, w_gate, w_up, w_down, weights, ids, shared=None):
    """A plain per-token loop, written apart from harness.ops.moe."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    x = x.double()
    for t in range(x.shape[0]):
        for slot in range(ids.shape[1]):
            e = int(ids[t, slot])
            g = x[t] @ w_gate[e].double().T
            h = (g * torch.sigmoid(g) * (x[t] @ w_up[e].double().T)) @ w_down[e].double().T
            out[t] += float(weights[t, slot]) * h
        if shared is not None:
            g = x[t] @ shared["shared_w_gate"].double().T
            s = (g * torch.sigmoid(g) * (x[t] @ shared["shared_w_up"].double().T)) @ shared["shared_w_down"].double().T
            if "shared_gate" in shared:
                s = s * torch.sigmoid(x[t] @ shared["shared_gate"][0].double())
            out[t] += s
    return out


@pytest.mark.parametrize("name", list(TINY))
def test_moe_reference_matches_a_per_token_loop(name: str) -> None:
    shape = MoeShape(t=16, dims=TINY[name])
    t = _weights(shape, torch.float32, seed=3, distribution="normal")
    shared = {n: w for n, w in t.items() if n.startswith("shared_")} or None
    args = [t[n] for n in ("x", "router_w", "w_gate", "w_up", "w_down")]
    got, _ = ops.moe(*args, shape.dims.spec, **moe_kwargs(t))
    weights, ids = ops.route(t["x"].double() @ t["router_w"].double().T, shape.dims.spec, bias=t.get("bias")).tensors()
    expected = per_token_moe(*args, weights, ids, shared)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _seeded_block(name: str, dims, seed: int) -> torch.nn.Module:
    """transformers' own MoE block for the scheme, float64, with seeded weights (and correction bias)."""
    block = build_block(name, dims).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in block.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) / param.shape[-1] ** 0.5)
        for buffer in block.buffers():
            buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen, dtype=torch.float64))
    return block


@pytest.mark.parametrize("name", list(TINY))
def test_reference_matches_transformers_moe_blocks(name: str) -> None:
    dims = TINY[name]
    block = _seeded_block(name, dims, seed=7)
    x = torch.randn(2, 16, dims.h, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with torch.no_grad():
        expected = block(x).reshape(-1, dims.h)
    inputs = contract_inputs(block)
    assert ("bias" in inputs) == dims.bias and ("shared_gate" in inputs) == dims.shared_gate
    shape = MoeShape(t=32, dims=dims)
    args, kwargs = WORKLOADS.get("moe.layer").split_args({"x": x.reshape(-1, dims.h), **inputs}, shape)
    got, _ = ops.moe(*args, **kwargs)
    # transformers rounds router probabilities (and DeepSeek its logits) to float32: agreement to ~1e-7.
    rel = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert float(rel.max()) < 1e-6, f"worst token rel error {float(rel.max()):.3g}"


def test_contract_inputs_round_trip_into_a_block() -> None:
    dims = TINY["deepseek-v3"]
    source = _seeded_block("deepseek-v3", dims, seed=1)
    target = load_contract_inputs(build_block("deepseek-v3", dims).double(), contract_inputs(source))
    x = torch.randn(1, 8, dims.h, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
