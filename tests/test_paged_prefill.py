"""Paged chunked prefill (attention.paged_prefill): Sq > 1 queries, the last Sq positions of each sequence, over a
paged cache. The reference equals the contiguous chunked prefill bitwise; backends pass (ascend through FIA's own
block_table prompt path where its block size allows, cuda by gathering) or skip with a reason; the paged faults
and a top-left causal kernel fail it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness import ops
from harness.backend import default_registry
from harness.backends.ascend import sim
from harness.models.attention import workloads
from harness.models.paged_attention import PagedShape
from harness.workload import WorkloadError

FAULTS = Path(__file__).resolve().parents[1] / "faults" / "harness_faults"
BY_NAME = {w.name: w for w in workloads()}
PAGED, CHUNKED = BY_NAME["attention.paged_prefill"], BY_NAME["attention.chunked_prefill"]


def _attend(inputs: dict[str, torch.Tensor], **kw: object) -> torch.Tensor:
    return ops.attention(inputs["q"], inputs["k"], inputs["v"], causal=True, kv_lens=inputs["kv_lens"], **kw)


@pytest.mark.parametrize("name", ["gqa", "gqa_bs64", "mqa", "mqa_bs64"])
def test_reference_equals_the_contiguous_chunked_prefill_bitwise(name: str) -> None:
    shape = PAGED.presets["tiny"][name]
    assert isinstance(shape, PagedShape) and shape.sq > 1
    assert any(n % shape.block_size for n in shape.lens())  # one length ends inside a block
    paged_inputs = PAGED.make_inputs(shape, torch.float32, 0, "normal")
    plain = CHUNKED.make_inputs(shape, torch.float32, 0, "normal")  # the same values, contiguous
    assert torch.equal(paged_inputs["q"], plain["q"])
    got = _attend(paged_inputs, block_table=paged_inputs["block_table"])
    assert torch.equal(got, _attend(plain))
    assert PAGED.shape_from_inputs(paged_inputs, shape) == shape


def test_presets_and_a_decode_shaped_input_is_refused() -> None:
    sizes = {p: {s.block_size for s in shapes.values()} for p, shapes in PAGED.presets.items()}
    assert sizes == {"tiny": {16, 64}, "small": {64, 128}, "real": {128}}
    shape = PAGED.presets["tiny"]["gqa"]
    inputs = PAGED.make_inputs(shape, torch.float32, 0, "normal")
    with pytest.raises(WorkloadError, match=r"input q: .*Sq > 1"):
        PAGED.shape_from_inputs({**inputs, "q": inputs["q"][:, :, :1]}, shape)


def _small(block_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(paged fp16 inputs, float64 reference output) of a small-preset-like case at one block size."""
    shape = PagedShape(b=2, hq=4, hkv=2, sq=8, skv=256, d=16, dv=16, kv_lens=(256, 141), block_size=block_size)
    inputs = PAGED.make_inputs(shape, torch.float16, 0, "normal")
    want = _attend({n: t.double() if t.is_floating_point() else t for n, t in inputs.items()},
                   block_table=inputs["block_table"])  # fmt: skip
    return inputs, want


@pytest.mark.parametrize(("block_size", "fia_pages"), [(128, True), (64, False)])
def test_ascend_takes_fia_block_table_prompt_path_only_at_multiples_of_128(
    monkeypatch: pytest.MonkeyPatch, block_size: int, fia_pages: bool
) -> None:
    """ascend-api.md: FIA's paged prompt path (Sq > 1) takes block sizes that are multiples of 128; the adapter
    gathers the others (the simulator refuses them, as the docs say the op does)."""
    calls: list[dict[str, object]] = []
    real = sim.npu_fused_infer_attention_score

    def recording(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "npu_fused_infer_attention_score", recording)
    inputs, want = _small(block_size)
    be = default_registry().create("ascend-sim")
    out = be.attention(inputs["q"], inputs["k"], inputs["v"], causal=True, kv_lens=inputs["kv_lens"],
                       block_table=inputs["block_table"])  # fmt: skip
    assert float((out.double() - want).norm() / want.norm()) < 2e-3
    paged_calls = [c for c in calls if c.get("block_table") is not None]
    assert len(paged_calls) == int(fia_pages) and len(calls) == 1
    if fia_pages:
        assert paged_calls[0]["sparse_mode"] == 3 and paged_calls[0]["actual_seq_lengths"] == [8, 8]
    q = inputs["q"].transpose(1, 2).reshape(2, 8, -1)
    pool = inputs["k"].reshape(inputs["k"].shape[0], 64, -1)
    with pytest.raises(ValueError, match="multiple of 128"):
        real(q, pool, pool, block_table=inputs["block_table"], block_size=64, actual_seq_lengths_kv=[256, 141],
             num_heads=4, num_key_value_heads=2)  # fmt: skip


def test_cuda_gathers_then_runs_its_contiguous_kernels_on_the_cpu() -> None:
    """The cuda backend's own attention method (its constructor needs a GPU, so the instance is built around the
    CPU's SDPA math kernel, which that method dispatches to as on a GPU)."""
    from harness.backends.cuda.attention import SdpaAttention
    from harness.backends.cuda.backend import CudaMath

    be = object.__new__(CudaMath)
    be._attention, be._details = SdpaAttention(("math",)), {}
    shape = PAGED.presets["tiny"]["mqa_bs64"]
    inputs = PAGED.make_inputs(shape, torch.float32, 0, "normal")
    out = be.attention(inputs["q"], inputs["k"], inputs["v"], causal=True, kv_lens=inputs["kv_lens"],
                       block_table=inputs["block_table"])  # fmt: skip
    want = _attend({n: t.double() if t.is_floating_point() else t for n, t in inputs.items()},
                   block_table=inputs["block_table"])  # fmt: skip
    assert float((out.double() - want).norm() / want.norm()) < 1e-5
    assert be._details["attention"]["paged"].startswith("gathered")


def test_backends_pass_or_skip_and_faults_fail_via_the_cli(harness_cli) -> None:
    run = harness_cli(
        "run", "-w", "attention.paged_prefill", "-b", "cpu-reference,torch-cpu,ascend-sim,ort-cpu",
        "--preset", "tiny", "--dtype", "float16", "--seeds", "0", "--parity-only",
    )  # fmt: skip
    by_backend: dict[str, set[str]] = {}
    for r in run.records:
        by_backend.setdefault(r["case"]["backend"], set()).add(r["status"])
    assert by_backend["torch-cpu"] == by_backend["ascend-sim"] == by_backend["cpu-reference"] == {"passed"}
    assert by_backend["ort-cpu"] == {"skipped"}
    assert all("block_table" in r["reason"] for r in run.records if r["case"]["backend"] == "ort-cpu")
    assert run.exit_code == 0

    faults = harness_cli(
        "run", "--plugin", str(FAULTS / "paged_faults.py"), "--plugin", str(FAULTS / "backends.py"),
        "-w", "attention.paged_prefill", "-b", "bug-paged-physical-order,bug-paged-partial-block,bug-top-left-causal",
        "--preset", "tiny", "--dtype", "float16", "--seeds", "0", "--distribution", "normal", "--parity-only",
    )  # fmt: skip
    assert faults.exit_code == 1
    assert len(faults.records) == 12 and {r["status"] for r in faults.records} == {"failed"}
    assert all("rel_l2" in r["reason"] for r in faults.records)


def test_paper_suite_plans_the_paged_forms_at_real_shapes_and_ci_at_tiny_ones() -> None:
    from dataclasses import replace

    from harness.planning import Planner
    from harness.suites import BUILTIN_SUITES
    from harness.workload import WorkloadRegistry

    planner = Planner(default_registry(), WorkloadRegistry.discover())
    paper = planner.plan(replace(BUILTIN_SUITES["paper"], backends=("cuda",)))
    paged = {(c.workload, c.preset, c.shape, c.dtype) for c in paper if "paged" in c.workload}
    assert paged == {(f"attention.paged_{k}", "real", "llama3-8b", "bfloat16") for k in ("decode", "prefill")}
    ci = planner.plan(replace(BUILTIN_SUITES["ci"], backends=("torch-cpu",)))
    assert {c.preset for c in ci if c.workload == "attention.paged_prefill"} == {"tiny"}
