"""A user's parity tests for a port, run on every backend they select:

    pytest examples/test_my_port.py --harness-backends torch-cpu,cpu-reference --harness-dtypes float32,bfloat16
    pytest examples/test_my_port.py --harness-backends torch-cpu --benchmark-json bench.json

Each test runs once per backend (an unavailable backend is skipped with its reason) and per dtype.
"""

from __future__ import annotations

import pytest
import torch

from harness.backend import DTYPES
from harness.testing import assert_parity


def test_my_decode_attention(harness_backend, harness_reference, harness_dtype):
    """My serving stack's decode shape: 32 query heads over 8 kv heads, ragged cache lengths."""
    dtype = DTYPES[harness_dtype]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 32, 1, 64, generator=g).to(dtype)
    k = torch.randn(3, 8, 200, 64, generator=g).to(dtype)
    v = torch.randn(3, 8, 200, 64, generator=g).to(dtype)
    kv_lens = torch.tensor([200, 17, 133])
    dev = harness_backend.to_device
    out = harness_backend.attention(dev(q), dev(k), dev(v), causal=True, kv_lens=dev(kv_lens))
    ref = harness_reference.attention(q, k, v, causal=True, kv_lens=kv_lens)
    assert_parity(harness_backend.to_host(out), ref, dtype=harness_dtype, reduction_length=200)


def test_my_rms_norm(harness_backend, harness_reference, harness_dtype):
    dtype = DTYPES[harness_dtype]
    x, w = torch.randn(16, 512).to(dtype), (1 + 0.1 * torch.randn(512)).to(dtype)
    out = harness_backend.to_host(harness_backend.rms_norm(harness_backend.to_device(x), harness_backend.to_device(w)))
    assert_parity(out, harness_reference.rms_norm(x, w), dtype=harness_dtype, reduction_length=512)


@pytest.mark.harness_workload("attention.decode", "moe.route")
def test_workload_cases(harness_case):
    """One generated test per case of these workloads (shape x dtype x input distribution x backend)."""
    harness_case.check()


def test_decode_attention_speed(harness_backend, harness_benchmark):
    """pytest-benchmark timing through the backend's synchronize(): --benchmark-json, --benchmark-compare."""
    q, k, v = (harness_backend.to_device(torch.randn(4, 8, s, 64)) for s in (1, 1024, 1024))
    harness_benchmark(harness_backend.attention, q, k, v, causal=True)
