"""ONNX Runtime backends: providers listed with reasons, the on-disk export cache, CANN's precision mode."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from harness.backends.onnx_export import CACHE_ENV, ExportCache
from harness.backends.onnxruntime import OrtCann, OrtCpu
from harness.workload import Case


def test_device_providers_are_listed_unavailable_with_the_reason(harness_cli) -> None:
    result = harness_cli("list")
    for name, provider in (("ort-cuda", "CUDAExecutionProvider"), ("ort-cann", "CANNExecutionProvider")):
        line = next(ln for ln in result.output.splitlines() if ln.startswith(f"│ {name} "))
        assert "unavailable" in line and provider in line
    assert OrtCpu.probe().available


def test_cann_keeps_float32_in_float32() -> None:
    # CANN's default precision_mode is force_fp16: it must be set explicitly (without creating a session).
    assert OrtCann.provider_options(OrtCann.__new__(OrtCann)) == {"precision_mode": "must_keep_origin_dtype"}


def test_bfloat16_is_a_clear_no_on_cpu() -> None:
    support = OrtCpu().supports(
        Case("attention.prefill", "tiny", "gqa", "bfloat16", "normal", 0, "ort-cpu", "attention")
    )
    assert not support and "bfloat16" in support.reason


@pytest.mark.slow
def test_export_cache_reuses_reexports_when_deleted_and_when_corrupt(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    x, w = torch.randn(3, 16), torch.randn(16)
    expected = OrtCpu().rms_norm(x, w)  # exports once
    files = list((tmp_path / "cache").glob("*.onnx"))
    assert len(files) == 1

    fresh = OrtCpu()  # a new process would find the model on disk: no export, only a session
    torch.testing.assert_close(fresh.rms_norm(x, w), expected)
    stats = fresh.compile_stats()
    assert "export_s" not in stats and stats["session_s"] > 0

    files[0].write_bytes(b"not an onnx model")  # corrupt cache entry
    corrupt = OrtCpu()
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(corrupt.rms_norm(x, w), expected)
    assert "is corrupt" in caplog.text and corrupt.compile_stats()["export_s"] > 0

    for f in (tmp_path / "cache").iterdir():  # deleted cache
        f.unlink()
    again = OrtCpu()
    torch.testing.assert_close(again.rms_norm(x, w), expected)
    assert again.compile_stats()["export_s"] > 0 and len(list((tmp_path / "cache").glob("*.onnx"))) == 1


@pytest.mark.slow
def test_llm_decodes_through_exported_kv_cache_graphs(harness_cli, tmp_path: Path, monkeypatch) -> None:
    """A tiny Llama on ort-cpu: logits and greedy tokens judged, decode timed through the cache graphs, and
    exactly two exports (prefill, decode with the cached length dynamic): none per decode step."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    run = harness_cli(
        "run", "-w", "llm.llama3", "-b", "ort-cpu", "--dtype", "float32", "--distribution", "normal",
        "--time-budget", "0.05",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    (record,) = run.records
    assert record["status"] == "passed"
    greedy = record["parity"]["greedy"]
    assert greedy["min"] == greedy["new_tokens"]  # every greedy token, step by step through the cache graph
    assert record["timing_variants"]["decode"]["tokens_per_s"] > 0
    assert record["compile"]["export_s"] > 0
    assert len(list((tmp_path / "cache").glob("causal_lm-*.onnx"))) == 2


def test_io_binding_path_computes_the_same_as_plain_feeds(harness_cli) -> None:
    """The device providers bind inputs and outputs; that path, run on the CPU provider, passes the same cases."""
    from tests.conftest import plugin

    run = harness_cli(
        "run", "--suite", "smoke", "-w", "attention.*,moe.*", "--shape", "gqa,mixtral", "--dtype", "float32,float16",
        "--distribution", "normal", "-b", "ort-cpu-iobinding", "--plugin", plugin("cpu_variants"), "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    paged = [r for r in run.records if r["case"]["workload"].startswith("attention.paged_")]  # ORT: no block table
    assert paged and all(r["status"] == "skipped" and "block_table" in r["reason"] for r in paged)
    rest = [r for r in run.records if r not in paged]
    assert {r["status"] for r in rest} == {"passed"} and len(rest) == 14


def test_bound_call_is_the_session_alone_and_still_computes(tmp_path: Path, monkeypatch) -> None:
    """`bind` resolves export, session and feeds once: timed calls never rebuild a cache key, yet each call runs
    the graph on the inputs as they are now (feeds are views, not a cached result)."""
    from harness import progress

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    kv_lens = torch.tensor([9, 4])
    backend = OrtCpu()
    phases: list[str] = []
    with progress.listening(phases.append):
        timed = backend.bind("attention", [q, k, v], {"causal": True, "kv_lens": kv_lens})
    assert phases == ["exporting the attention graph (float32)"]
    expected = backend.attention(q, k, v, causal=True, kv_lens=kv_lens)

    def no_rekeying(*args, **kwargs):
        raise AssertionError("a timed call recomputed the export cache key")

    monkeypatch.setattr(backend._exports, "key", no_rekeying)
    torch.testing.assert_close(timed(), expected)
    q.mul_(-1.0)  # the same tensors, new values: the bound call must see them
    torch.testing.assert_close(timed(), OrtCpu().attention(q, k, v, causal=True, kv_lens=kv_lens))


def test_a_failed_dynamic_export_is_remembered_across_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    exports: list[bool] = []
    original = ExportCache.export

    def export(self, module, op, static, tensors, names, path, dynamic):
        exports.append(dynamic)
        if dynamic:
            raise RuntimeError("planted: this op does not export with dynamic shapes")
        return original(self, module, op, static, tensors, names, path, dynamic)

    monkeypatch.setattr(ExportCache, "export", export)
    x, w = torch.randn(3, 16), torch.randn(16)
    OrtCpu().rms_norm(x, w)
    assert exports == [True, False] and list((tmp_path / "cache").glob("*.dynamic-failed"))
    OrtCpu().rms_norm(x, w)  # a new process would be a new backend: no dynamic attempt, the static model reused
    assert exports == [True, False]


@pytest.mark.slow
def test_one_llm_graph_serves_every_seed_and_refuses_weights_it_cannot_take(
    harness_cli, tmp_path: Path, monkeypatch
) -> None:
    """The graph is exported once per architecture, dtype and mode; another seed's session gets its own weights
    as the graph's initializers (a stale weight would fail parity, as a false failure, never pass). Where the
    export folded a tensor whose value now differs, the graph is not shared: that seed gets an export of its own."""
    import harness.backends.onnx_export as ort_export

    args = ("run", "-w", "llm.llama3", "-b", "ort-cpu", "--dtype", "float32", "--seeds", "0,1", "--parity-only")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    run = harness_cli(*args)
    assert run.exit_code == 0, run.output
    assert [r["status"] for r in run.records] == ["passed", "passed"]
    assert run.records[0]["compile"]["export_s"] > 0 and "export_s" not in (run.records[1]["compile"] or {})
    assert len(list((tmp_path / "shared").glob("causal_lm-*.onnx"))) == 2  # prefill and decode, for both seeds

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "own"))
    counter = iter(range(10**6))
    monkeypatch.setattr(ort_export, "digests", lambda tensors: {n: str(next(counter)) for n in tensors})
    run = harness_cli(*args)
    assert run.exit_code == 0, run.output
    assert [r["status"] for r in run.records] == ["passed", "passed"]
    assert len(list((tmp_path / "own").glob("causal_lm-*.onnx"))) == 4  # seed 1 could not share: its own graphs
