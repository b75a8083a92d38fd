"""The pytest plugin, through pytester: a user's test file, a deliberately wrong result, skips, benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch  # noqa: F401  (before pytester's in-process runs, which drop the modules they import: torch twice segfaults)

from tests.conftest import PLUGINS

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "test_my_port.py"


def test_example_user_file_passes_on_both_cpu_backends(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_my_port=EXAMPLE.read_text())
    result = pytester.runpytest(
        "--harness-backends", "torch-cpu,cpu-reference", "--benchmark-disable", "-p", "no:cacheprovider"
    )
    outcomes = result.parseoutcomes()
    # 2 ops x 2 backends, 1 benchmark x 2 backends, and 24 generated cases (2 decode + 4 route shapes, x 2
    # input distributions, x 2 backends), all in float32.
    assert outcomes == {"passed": 4 + 2 + 24}


def test_a_wrong_result_fails_naming_the_metric(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        from harness.testing import assert_parity

        def test_wrong(harness_backend, harness_reference):
            q, k, v = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
            out = harness_backend.to_host(harness_backend.attention(q, k, v, causal=True))
            out[0, 1, 5] *= 1.5   # a deliberately wrong row
            assert_parity(out, harness_reference.attention(q, k, v, causal=True), reduction_length=8)
        """
    )
    result = pytester.runpytest("--harness-backends", "torch-cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*ParityError: parity failed (float32): rel_l2 = * > budget 1e-05; worst_row_rel_l2 = 0.5*"]
    )
    assert "worst element at index [0, 1, 5," in result.stdout.str()  # the row made wrong


def test_unavailable_backend_skips_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_any(harness_backend):\n    pass\n")
    result = pytester.runpytest(
        "--harness-plugin",
        str(PLUGINS / "unavailable.py"),
        "--harness-backends",
        "needs-missing-sdk,torch-cpu",
        "-rs",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs-missing-sdk unavailable: vendor SDK not importable*"])


def test_generated_cases_fail_for_a_planted_fault(pytester: pytest.Pytester) -> None:
    faults = Path(__file__).resolve().parents[1] / "faults" / "harness_faults" / "backends.py"
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.harness_workload("attention.chunked_prefill")
        def test_cases(harness_case):
            harness_case.check()
        """
    )
    result = pytester.runpytest(
        "--harness-plugin", str(faults), "--harness-backends", "bug-top-left-causal", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=4)  # 2 shapes x 2 input distributions
    result.stdout.fnmatch_lines(
        ["*attention.chunked_prefill/tiny/gqa/float32/normal/seed0@bug-top-left-causal: failed: rel_l2 = *"]
    )


def test_benchmark_json_records_the_backend(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        """
        import torch

        def test_speed(harness_backend, harness_benchmark):
            x = harness_backend.to_device(torch.randn(64, 64))
            harness_benchmark(torch.matmul, x, x)
        """
    )
    out = tmp_path / "bench.json"
    result = pytester.runpytest(
        "--harness-backends",
        "torch-cpu",
        f"--benchmark-json={out}",
        "--benchmark-min-rounds=3",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    [bench] = json.loads(out.read_text())["benchmarks"]
    assert bench["extra_info"] == {"harness_backend": "torch-cpu", "harness_timer": "perf_counter_ns"}
    assert bench["stats"]["median"] > 0
