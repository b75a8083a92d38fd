"""Sliding windows off the prefill path: attention.sliding_window holds decode (Sq = 1, ragged) and chunked-prefill
(Sq < Skv, ragged) shapes beside the square ones, every backend with windows passes them, and a kernel that applies
the window only when Sq == Skv fails exactly those shapes."""

from __future__ import annotations

import pytest

from harness import ops
from harness.lazy import torch
from harness.models.attention import workloads
from tests.conftest import FAULTS

OFF_PREFILL = ("gqa-decode", "mqa-decode", "gqa-chunked", "mqa-chunked")


def sliding_window():
    return next(w for w in workloads() if w.name == "attention.sliding_window")


@pytest.mark.parametrize("preset", ["tiny", "small", "real"])
def test_every_preset_has_decode_and_chunked_window_shapes_where_the_window_cuts(preset: str) -> None:
    shapes = sliding_window().shapes(preset)
    decode = [s for name, s in shapes.items() if name.endswith("-decode")]
    chunked = [s for name, s in shapes.items() if name.endswith("-chunked")]
    assert decode and chunked and len(decode) == len(chunked) == len(shapes) // 3
    for s in decode + chunked:
        assert s.window and s.kv_lens and len(set(s.kv_lens)) > 1  # windowed and ragged
        vis = ops.visible_keys(s.sq, s.skv, batch=s.b, causal=True, window=s.window, kv_lens=torch.tensor(s.kv_lens))
        unwindowed = ops.visible_keys(s.sq, s.skv, batch=s.b, causal=True, kv_lens=torch.tensor(s.kv_lens))
        assert bool((vis != unwindowed).any())  # the window hides keys a windowless kernel would read
    assert all(s.sq == 1 for s in decode) and all(1 < s.sq < s.skv for s in chunked)


def test_window_shapes_pass_on_every_cpu_backend_with_windows(harness_cli) -> None:
    run = harness_cli(
        "run",
        "-w",
        "attention.sliding_window",
        "-b",
        "cpu-reference,torch-cpu,ascend-sim,ort-cpu,ort-cpu-gqa",
        "--dtype",
        "float32,float16",
        "--distribution",
        "normal",
        "--parity-only",
    )
    assert run.exit_code == 0, run.output
    status: dict[tuple[str, str], set[str]] = {}
    for r in run.records:
        status.setdefault((r["case"]["backend"], r["case"]["shape"]), set()).add(r["status"])
    for backend in ("cpu-reference", "torch-cpu", "ascend-sim", "ort-cpu"):
        for shape in OFF_PREFILL:
            assert status[(backend, shape)] == {"passed"}, (backend, shape)
    # ORT's GroupQueryAttention takes the window (local_window_size) but not D != Dv: gqa runs, mqa skips, said so
    assert status[("ort-cpu-gqa", "gqa-decode")] == status[("ort-cpu-gqa", "gqa-chunked")] == {"passed"}
    skipped = [r for r in run.records if r["status"] == "skipped"]
    assert skipped and all(r["case"]["shape"].startswith("mqa") and "D 32 != Dv 16" in r["reason"] for r in skipped)


def test_a_window_applied_only_when_sq_equals_skv_fails_the_decode_and_chunked_shapes(harness_cli) -> None:
    run = harness_cli(
        "run",
        "--plugin",
        FAULTS,
        "-b",
        "bug-window-prefill-only",
        "-w",
        "attention.sliding_window",
        "--dtype",
        "float32,bfloat16",
        "--parity-only",
    )
    assert run.exit_code == 1
    by_shape: dict[str, set[str]] = {}
    for r in run.records:
        by_shape.setdefault(r["case"]["shape"], set()).add(r["status"])
    assert by_shape.pop("gqa") == by_shape.pop("mqa") == {"passed"}  # the old shapes could not see it
    assert by_shape == {name: {"failed"} for name in OFF_PREFILL}
    failed = next(r for r in run.records if r["status"] == "failed")
    assert "rel_l2" in failed["reason"] and "budget" in failed["reason"]
