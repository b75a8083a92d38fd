"""attention.mla_decode (op `mla`, DeepSeek-V3 absorbed MLA): the reference against a direct computation, the paged
form against the contiguous one, the torch and CUDA paths on the CPU, the CPU backends through the CLI, and the
planted MLA faults."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness import ops, torch_mla
from harness.backends.cuda.attention import SdpaAttention
from harness.backends.cuda.mla import CudaMla
from harness.backends.torch_cpu import TorchCpu
from harness.models.attention import workloads

MLA_FAULTS = str(Path(__file__).resolve().parents[1] / "faults" / "harness_faults" / "mla_faults.py")
WORKLOAD = next(w for w in workloads() if w.name == "attention.mla_decode")
TINY = WORKLOAD.shapes("tiny")
CONTIGUOUS = [n for n, s in TINY.items() if s.block_size is None]
PAGED = [n for n, s in TINY.items() if s.block_size is not None]


def _inputs(name: str, dtype: torch.dtype = torch.float32, distribution: str = "normal") -> dict[str, torch.Tensor]:
    return WORKLOAD.make_inputs(TINY[name], dtype, 0, distribution)


def _direct(q: torch.Tensor, kv: torch.Tensor, lens: list[int], scale: float, dv: int) -> torch.Tensor:
    """Absorbed MLA written out loop by loop in float64, the latent (nope) and rope dot products separately."""
    B, H, Sq, _ = q.shape
    q, kv = q.double(), kv.double()
    out = torch.zeros(B, H, Sq, dv, dtype=torch.float64)
    for b in range(B):
        for i in range(Sq):
            n = min(lens[b], lens[b] - Sq + i + 1)  # bottom-right causal: query i sees keys j <= L - Sq + i
            if n <= 0:
                continue
            keys = kv[b, :n]  # [n, D]
            nope = q[b, :, i, :dv] @ keys[:, :dv].T  # [H, n]
            rope = q[b, :, i, dv:] @ keys[:, dv:].T  # [H, n]
            p = torch.softmax((nope + rope) * scale, dim=-1)
            out[b, :, i] = p @ keys[:, :dv]
    return out


def test_shapes_are_deepseek_v3_absorbed_geometry() -> None:
    for preset in ("tiny", "small", "real"):
        for shape in WORKLOAD.shapes(preset).values():
            assert (shape.hkv, shape.d, shape.dv) == (1, 576, 512)
            assert shape.scale == pytest.approx(1 / math.sqrt(192))
            assert shape.hq in (16, 32, 64, 128)
            lens = shape.lens()
            assert max(lens) == shape.skv and any(n < shape.skv for n in lens)  # one full, one ending mid-way
    real = WORKLOAD.shapes("real").values()
    assert {s.hq for s in real} == {128} and max(s.b for s in real) == 64 and max(s.skv for s in real) == 32768
    assert {s.sq for s in TINY.values()} == {1, 2} and {s.block_size for s in TINY.values()} == {None, 16, 64}


@pytest.mark.parametrize("name", CONTIGUOUS)
def test_reference_equals_a_direct_split_nope_rope_computation(name: str) -> None:
    s = TINY[name]
    t = _inputs(name)
    ref = WORKLOAD.reference(t, s)
    assert ref.shape == (s.b, s.hq, s.sq, s.dv) and ref.dtype == torch.float64
    torch.testing.assert_close(ref, _direct(t["q"], t["kv"], s.lens(), s.scale, s.dv), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PAGED)
def test_paged_form_equals_the_contiguous_form_bitwise(name: str) -> None:
    s = TINY[name]
    paged_in = _inputs(name)
    flat = WORKLOAD.make_inputs(replace(s, block_size=None), torch.float32, 0, "normal")
    assert torch.equal(paged_in["q"], flat["q"])
    assert paged_in["kv"].shape[1:] == (s.block_size, s.d) and paged_in["block_table"].shape == (
        s.b,
        s.skv // s.block_size,
    )
    table = paged_in["block_table"]
    for b, n in enumerate(s.lens()):  # shuffled: a sequence's used blocks never in ascending physical order
        used = table[b, : -(-n // s.block_size)]
        assert used.numel() < 2 or not bool((used[1:] > used[:-1]).all())
    assert torch.equal(WORKLOAD.reference(paged_in, s), WORKLOAD.reference(flat, replace(s, block_size=None)))
    cpu = TorchCpu()
    args, kw = WORKLOAD.split_args(paged_in, s)
    fargs, fkw = WORKLOAD.split_args(flat, replace(s, block_size=None))
    assert torch.equal(cpu.mla(*args, **kw), cpu.mla(*fargs, **fkw))


def test_work_counts_are_the_absorbed_forms() -> None:
    s = TINY["decode"]  # B 2, H 32, lens (64, 23)
    assert WORKLOAD.flops(s) == 2.0 * 32 * (64 + 23) * (576 + 512)
    # the latent cache read once (no separate V), q read and out written
    assert WORKLOAD.bytes_moved(s, 2) == 2 * (2 * 32 * 1 * (576 + 512) + (64 + 23) * 576)
    mtp = TINY["mtp"]  # Sq 2, bottom-right causal: query 0 sees L - 1 keys, query 1 all L
    assert WORKLOAD.flops(mtp) == 2.0 * 32 * (63 + 64 + 22 + 23) * (576 + 512)
    paged = TINY["paged-bs16"]  # + the int32 block table
    assert WORKLOAD.bytes_moved(paged, 2) == 2 * (3 * 32 * (576 + 512) + (128 + 23 + 70) * 576) + 3 * 8 * 4


@pytest.mark.parametrize("name", list(TINY))
def test_shape_from_inputs_recovers_the_shape(name: str) -> None:
    s = TINY[name]
    assert WORKLOAD.shape_from_inputs(_inputs(name), s) == s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(TINY))
def test_absorbed_two_gemm_path_matches_the_reference(name: str, dtype: torch.dtype) -> None:
    s = TINY[name]
    t = _inputs(name, dtype, "stress")
    args, kw = WORKLOAD.split_args(t, s)
    out = torch_mla.absorbed_mla(*args, **kw)
    assert out.dtype == dtype and out.shape == (s.b, s.hq, s.sq, s.dv)
    ref = WORKLOAD.reference(t, s)
    rel = float((out.double() - ref).norm() / ref.norm())
    assert rel < (1e-5 if dtype == torch.float32 else 1e-2)


def test_a_sequence_without_keys_gives_zeros() -> None:
    t = _inputs("mtp")
    lens = torch.tensor([64, 1])  # sequence 1: query 0 of 2 sees no key (bottom-right causal)
    out = torch_mla.absorbed_mla(t["q"], t["kv"], dv=512, scale=192**-0.5, kv_lens=lens)
    ref = ops.mla(t["q"], t["kv"], dv=512, scale=192**-0.5, kv_lens=lens)
    assert torch.equal(out[1, :, 0], torch.zeros_like(out[1, :, 0]))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(TINY))
def test_cuda_mla_paths_on_the_cpu_match_the_reference_and_are_recorded(name: str) -> None:
    """The CUDA backend's MLA dispatch on CPU tensors (SDPA's math kernel stands in for the GPU kernels)."""
    s = TINY[name]
    t = _inputs(name)
    args, kw = WORKLOAD.split_args(t, s)
    mla = CudaMla(SdpaAttention(("math",)))
    out = mla(*args, **kw)
    ref = WORKLOAD.reference(t, s)
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-5
    assert mla.last is not None and mla.last.path in mla.last.tried
    expected = {"gemm", "sdpa/math"} if s.sq == 1 else {"gemm"}  # heads-as-rows SDPA only where Sq = 1
    assert set(mla.last.tried) == expected
    if s.sq == 1 and s.block_size is None:  # the SDPA path itself, whichever won the timing
        sdpa = mla.run("sdpa/math", t["q"], t["kv"], s.dv, s.scale, True, t["kv_lens"])
        assert float((sdpa.double() - ref).norm() / ref.norm()) < 1e-5


def test_cpu_backends_pass_through_the_cli(harness_cli) -> None:
    run = harness_cli(
        "run",
        "-w",
        "attention.mla_decode",
        "-b",
        "cpu-reference,torch-cpu,ascend-sim,ort-cpu",
        "--dtype",
        "float32,bfloat16,float16",
        "--parity-only",
    )
    assert run.exit_code == 0, run.output
    statuses = {(r["case"]["backend"], r["status"]) for r in run.records}
    for backend in ("cpu-reference", "torch-cpu", "ascend-sim", "ort-cpu"):
        assert (backend, "passed") in statuses
    assert not {s for _, s in statuses} - {"passed", "skipped"}
    skipped = [r for r in run.records if r["status"] == "skipped"]
    assert all(r["case"]["backend"] == "ort-cpu" and r["reason"] for r in skipped)  # bfloat16; paged: said why


@pytest.mark.parametrize("fault", ["bug-mla-scale", "bug-mla-rope-dropped"])
def test_planted_mla_faults_fail_every_case_naming_the_metric(harness_cli, fault: str) -> None:
    run = harness_cli(
        "run",
        "--plugin",
        MLA_FAULTS,
        "-b",
        fault,
        "-w",
        "attention.mla_decode",
        "--dtype",
        "float32,bfloat16",
        "--parity-only",
    )
    assert run.exit_code == 1
    assert run.records and {r["status"] for r in run.records} == {"failed"}
    assert all("rel_l2" in r["reason"] and "budget" in r["reason"] for r in run.records)
