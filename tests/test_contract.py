"""The contract tests: every registered, available backend against the float64 reference.

New backends get these for free: they run for each name in the registry. An unavailable backend skips with its
probe reason; an op or dtype it does not claim skips through its own `supports` logic.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness import ops, parity, parity_routing
from harness.backend import DTYPES, Availability, Backend, UnsupportedCaseError, default_registry
from harness.names import ROPE_STYLES
from harness.timing import TimingConfig, measure
from harness.workload import Case, map_tensors

pytestmark = pytest.mark.contract

REGISTRY = default_registry()
BACKENDS = REGISTRY.names()
CONTRACT_DTYPES = ("float32", "bfloat16", "float16")

ATTENTION_CASES = {
    "mha-full": dict(B=1, Hq=2, Hkv=2, Sq=16, Skv=16, D=16, Dv=16, causal=False, window=None, kv_lens=None, scale=None),
    "gqa-prefill": dict(
        B=2, Hq=4, Hkv=2, Sq=24, Skv=24, D=16, Dv=16, causal=True, window=None, kv_lens=None, scale=None
    ),
    "mqa-chunked": dict(
        B=2, Hq=4, Hkv=1, Sq=8, Skv=32, D=16, Dv=8, causal=True, window=None, kv_lens=[32, 20], scale=None
    ),
    "decode-empty": dict(
        B=3, Hq=4, Hkv=2, Sq=1, Skv=32, D=16, Dv=16, causal=True, window=None, kv_lens=[32, 0, 7], scale=None
    ),
    "window": dict(B=1, Hq=4, Hkv=2, Sq=32, Skv=32, D=16, Dv=16, causal=True, window=5, kv_lens=None, scale=0.2),
    "sq-gt-len": dict(B=1, Hq=2, Hkv=1, Sq=8, Skv=12, D=16, Dv=16, causal=True, window=None, kv_lens=[4], scale=None),
    "noncausal-padded": dict(
        B=2, Hq=2, Hkv=2, Sq=4, Skv=12, D=16, Dv=16, causal=False, window=None, kv_lens=[12, 3], scale=None
    ),
}


def backend_or_skip(name: str, op: str, dtype: str) -> Backend:
    availability = REGISTRY.probe(name)
    if not availability.available:
        pytest.skip(f"{name} unavailable: {availability.reason}")
    backend = REGISTRY.create(name)
    support = backend.supports(Case("contract", "tiny", "contract", dtype, "normal", 0, name, op))
    if not support:
        pytest.skip(support.reason)
    return backend


def run_op(backend: Backend, op: str, *args, **kwargs):
    dev = map_tensors(list(args), backend.to_device)
    kw = map_tensors(kwargs, backend.to_device)
    try:
        out = getattr(backend, op)(*dev, **kw)
    except UnsupportedCaseError as exc:  # a refusal found by trying (a kernel rejecting the shape) is a skip
        pytest.skip(f"{backend.name}: {exc}")
    backend.synchronize()
    return map_tensors(out, backend.to_host)


def assert_parity(out: torch.Tensor, ref: torch.Tensor, dtype: str, reduction: int) -> None:
    assert out.dtype == DTYPES[dtype], f"output dtype {out.dtype}, case dtype {dtype}"
    assert out.shape == ref.shape
    budget = parity.budget_for(dtype, reduction)
    verdict = parity.judge(parity.compare(out, ref, budget), budget)
    assert verdict.passed, verdict.reason


@pytest.mark.parametrize("dtype", CONTRACT_DTYPES)
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("name", BACKENDS)
def test_attention(name: str, case: str, dtype: str) -> None:
    backend = backend_or_skip(name, "attention", dtype)
    c = ATTENTION_CASES[case]
    g = torch.Generator().manual_seed(1)
    t = DTYPES[dtype]
    q = torch.randn(c["B"], c["Hq"], c["Sq"], c["D"], generator=g).to(t)
    k = torch.randn(c["B"], c["Hkv"], c["Skv"], c["D"], generator=g).to(t)
    v = torch.randn(c["B"], c["Hkv"], c["Skv"], c["Dv"], generator=g).to(t)
    kv_lens = torch.tensor(c["kv_lens"]) if c["kv_lens"] is not None else None
    kw = dict(causal=c["causal"], window=c["window"], scale=c["scale"])
    if kv_lens is not None:
        kw["kv_lens"] = kv_lens
    out = run_op(backend, "attention", q, k, v, **kw)
    ref = ops.attention(q, k, v, **kw)
    assert_parity(out, ref, dtype, c["Skv"])
    # Rows that see no key must be exactly zero, not NaN.
    empty = ~ops.visible_keys(
        c["Sq"], c["Skv"], batch=c["B"], kv_lens=kv_lens, causal=c["causal"], window=c["window"]
    ).any(-1)  # [B, Sq]
    if empty.any():
        rows = out.permute(0, 2, 1, 3)[empty]  # [n_empty, Hq, Dv]
        assert torch.equal(rows, torch.zeros_like(rows))


@pytest.mark.parametrize("dtype", CONTRACT_DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_rms_norm(name: str, dtype: str) -> None:
    backend = backend_or_skip(name, "rms_norm", dtype)
    x, w = torch.randn(4, 7, 64).to(DTYPES[dtype]), (1 + torch.randn(64) * 0.1).to(DTYPES[dtype])
    assert_parity(run_op(backend, "rms_norm", x, w, eps=1e-5), ops.rms_norm(x, w, 1e-5), dtype, 64)


@pytest.mark.parametrize("style", ROPE_STYLES)
@pytest.mark.parametrize("dtype", CONTRACT_DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_rope(name: str, dtype: str, style: str) -> None:
    backend = backend_or_skip(name, "rope", dtype)
    S, D = 12, 32
    theta = torch.arange(S).view(S, 1) * 10000 ** (-torch.arange(D // 2) / (D // 2))
    expand = (lambda t: torch.cat([t, t], -1)) if style == "half" else (lambda t: t.repeat_interleave(2, -1))
    t = DTYPES[dtype]
    cos, sin = expand(theta.cos()).to(t), expand(theta.sin()).to(t)
    x = torch.randn(2, 3, S, D).to(t)
    assert_parity(run_op(backend, "rope", x, cos, sin, style=style), ops.rope(x, cos, sin, style), dtype, 2)


@pytest.mark.parametrize("dtype", CONTRACT_DTYPES)
@pytest.mark.parametrize("name", BACKENDS)
def test_swiglu(name: str, dtype: str) -> None:
    backend = backend_or_skip(name, "swiglu", dtype)
    x = torch.randn(5, 2 * 48).to(DTYPES[dtype])
    assert_parity(run_op(backend, "swiglu", x), ops.swiglu(x), dtype, 1)


@pytest.mark.parametrize("name", BACKENDS)
def test_probe_never_raises_and_says_why(name: str) -> None:
    availability = REGISTRY.probe(name)
    assert isinstance(availability, Availability)
    assert availability.available or availability.reason


@pytest.mark.parametrize("name", BACKENDS)
def test_plumbing(name: str) -> None:
    """Device round trip, environment, capabilities, timer, and capability-based refusals."""
    if not REGISTRY.probe(name).available:
        pytest.skip(f"{name} unavailable: {REGISTRY.probe(name).reason}")
    backend = REGISTRY.create(name)
    x = torch.randn(3, 5)
    assert torch.equal(backend.to_host(backend.to_device(x)), x)
    env = backend.environment()
    json.dumps(env)
    caps = backend.capabilities()
    assert "attention" in caps["ops"] and set(caps["dtypes"]) <= set(DTYPES)
    m = measure(lambda: x @ x.T, backend.timer(), TimingConfig(budget_s=0.01, warmup_s=0.001, min_samples=3))
    assert m.stats.n >= 3 and m.stats.median_ns > 0 and math.isfinite(m.stats.ci95_high_ns)
    missing = next((d for d in DTYPES if d not in backend.dtypes), None)
    if missing is not None:
        no = backend.supports(Case("w", "tiny", "s", missing, "normal", 0, name, "attention"))
        assert not no and missing in no.reason
    no = backend.supports(Case("w", "tiny", "s", "float32", "normal", 0, name, "no_such_op"))
    assert not no and "no_such_op" in no.reason


MOE_DIMS = {name: dims for name, dims in __import__("harness.models.moe", fromlist=["TINY"]).TINY.items()}


def _moe_inputs(name: str, dtype: str) -> tuple[dict, dict, ops.RoutingSpec]:
    """The layer's tensors and its contract keywords (spec, bias, shared), packed as the workload packs them."""
    from harness.models.moe import MoeShape, _weights
    from harness.op_types import moe_kwargs

    shape = MoeShape(t=24, dims=MOE_DIMS[name])
    t = _weights(shape, DTYPES[dtype], seed=2, distribution="normal")
    return t, {"spec": shape.dims.spec, **moe_kwargs(t)}, shape.dims.spec


@pytest.mark.parametrize("dtype", CONTRACT_DTYPES)
@pytest.mark.parametrize("scheme", list(MOE_DIMS))
@pytest.mark.parametrize("name", BACKENDS)
def test_moe(name: str, scheme: str, dtype: str) -> None:
    backend = backend_or_skip(name, "moe", dtype)
    t, kwargs, spec = _moe_inputs(scheme, dtype)
    args = (t["x"], t["router_w"], t["w_gate"], t["w_up"], t["w_down"])
    reduction = max(MOE_DIMS[scheme].h, MOE_DIMS[scheme].f)
    # Free routing, returning the routing applied: the same expert sets as the reference up to near-ties.
    out, routing = run_op(backend, "moe", *args, **kwargs)
    assert isinstance(routing, ops.Routing) and routing.ids.dtype == torch.int64
    logits = t["x"].double() @ t["router_w"].double().T
    ref_routing = ops.route(logits, spec, bias=kwargs.get("bias"))
    near, tol = parity_routing.routing_near_ties(logits, dtype, spec, bias=kwargs.get("bias"))
    _, agree, _, failures = parity_routing.compare_routing(routing, ref_routing, near, tol, parity.budget_for(dtype, 8))
    assert not failures, failures[0].describe()
    ref, _ = ops.moe(*args, **kwargs)
    assert out.dtype == DTYPES[dtype] and out.shape == ref.shape
    assert_parity(out[agree], ref[agree], dtype, reduction)
    # A given routing is honoured exactly, and returned: the layer computes with the routing it is given.
    forced = ops.Routing(ref_routing.weights.float(), ref_routing.ids)
    out, applied = run_op(backend, "moe", *args, **kwargs, routing=forced)
    assert torch.equal(applied.ids, forced.ids) and torch.equal(applied.weights.float(), forced.weights)
    assert_parity(out, ops.moe(*args, **kwargs, routing=forced)[0], dtype, reduction)
    shuffled = ops.Routing(forced.weights, (forced.ids + 1) % MOE_DIMS[scheme].e)
    wrong, applied = run_op(backend, "moe", *args, **kwargs, routing=shuffled)
    assert torch.equal(applied.ids, shuffled.ids)
    assert not torch.allclose(wrong.double(), out.double(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", CONTRACT_DTYPES)
@pytest.mark.parametrize("scheme", list(MOE_DIMS))
@pytest.mark.parametrize("name", BACKENDS)
def test_route(name: str, scheme: str, dtype: str) -> None:
    backend = backend_or_skip(name, "route", dtype)
    dims = MOE_DIMS[scheme]
    logits = torch.randn(40, dims.e, generator=torch.Generator().manual_seed(5)).to(DTYPES[dtype])
    bias = 0.1 * torch.randn(dims.e) if dims.bias else None
    got = run_op(backend, "route", logits, dims.spec, bias=bias)
    assert isinstance(got, ops.Routing)
    assert got.ids.dtype == torch.int64 and got.ids.shape == (40, dims.top_k) and got.weights.shape == got.ids.shape
    ref = ops.route(logits, dims.spec, bias=bias)
    near, tol = parity_routing.routing_near_ties(logits, dtype, dims.spec, bias=bias)
    budget = parity.budget_for(dtype, dims.e)
    _, _, metrics, failures = parity_routing.compare_routing(got, ref, near, tol, budget)
    assert not failures, failures[0].describe()
    assert metrics is not None and parity.judge(metrics, budget).passed
