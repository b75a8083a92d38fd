"""The paged KV cache form of attention (harness/paged.py, attention.paged_decode): the reference gathers blocks in
logical order and equals the contiguous case bitwise; unused table entries are never read; backends pass or skip
with a reason; the planted paged faults fail naming the metric."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness import ops, paged
from harness.backend import default_registry
from harness.models.attention import workloads
from harness.models.paged_attention import PagedShape
from harness.paged import never_ascending

PAGED_FAULTS = str(Path(__file__).resolve().parents[1] / "faults" / "harness_faults" / "paged_faults.py")


def _case(block_size: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(contiguous inputs, paged inputs) of one ragged decode: lengths end inside blocks and on a boundary."""
    gen = torch.Generator().manual_seed(seed)
    B, Hq, Hkv, Skv, D = 3, 4, 2, 128, 16
    q = torch.randn(B, Hq, 1, D, generator=gen)
    k = torch.randn(B, Hkv, Skv, D, generator=gen)
    v = torch.randn(B, Hkv, Skv, D, generator=gen)
    kv_lens = torch.tensor([128, 23, 70])
    spare = 2
    order = torch.randperm(B * (Skv // block_size) + spare, generator=gen)
    k_pool, table = paged.paginate(k, block_size, order, spare)
    v_pool, _ = paged.paginate(v, block_size, order, spare)
    contiguous = {"q": q, "k": k, "v": v, "kv_lens": kv_lens}
    return contiguous, {"q": q, "k": k_pool, "v": v_pool, "kv_lens": kv_lens, "block_table": table}


def _unused_to_garbage(inputs: dict[str, torch.Tensor], fill: int) -> dict[str, torch.Tensor]:
    table = inputs["block_table"].clone()
    used = paged.used_entries(table, inputs["kv_lens"], inputs["k"].shape[1])
    table[~used] = fill  # an id past the pool, or negative: dereferencing it would raise
    return {**inputs, "block_table": table}


@pytest.mark.parametrize("block_size", [16, 64])
def test_reference_gathered_equals_contiguous_bitwise(block_size: int) -> None:
    contiguous, paged_inputs = _case(block_size)
    want = ops.attention(**{n: contiguous[n] for n in ("q", "k", "v")}, causal=True, kv_lens=contiguous["kv_lens"])
    got = ops.attention(
        paged_inputs["q"],
        paged_inputs["k"],
        paged_inputs["v"],
        causal=True,
        kv_lens=paged_inputs["kv_lens"],
        block_table=paged_inputs["block_table"],
    )
    assert torch.equal(got, want)
    # The pool really is shuffled: reading it in physical order gives something else.
    assert not torch.equal(paged_inputs["block_table"], paged_inputs["block_table"].sort(dim=1).values)


@pytest.mark.parametrize("fill", [10**6, -7])
@pytest.mark.parametrize("backend", ["cpu-reference", "torch-cpu", "ascend-sim"])
def test_unused_table_entries_are_never_read(backend: str, fill: int) -> None:
    be = default_registry().create(backend)
    _, clean = _case(16)
    dirty = _unused_to_garbage(clean, fill)
    q, k, v = (clean[n].to(torch.float16) for n in ("q", "k", "v"))
    kw = {"causal": True, "kv_lens": clean["kv_lens"]}
    want = be.attention(q, k, v, block_table=clean["block_table"], **kw)
    assert torch.equal(be.attention(q, k, v, block_table=dirty["block_table"], **kw), want)


def test_contract_names_a_used_entry_out_of_range_and_missing_lengths() -> None:
    _, inputs = _case(16)
    table = inputs["block_table"].clone()
    table[0, 0] = 999
    with pytest.raises(ops.ContractError, match=r"block_table: the entries kv_lens uses must lie in \[0, "):
        ops.attention(inputs["q"], inputs["k"], inputs["v"], kv_lens=inputs["kv_lens"], block_table=table)
    with pytest.raises(ops.ContractError, match="kv_lens: required with block_table"):
        ops.attention(inputs["q"], inputs["k"], inputs["v"], block_table=inputs["block_table"])


def test_pool_order_is_never_ascending_within_a_sequence() -> None:
    order = torch.arange(3 * 8 + 3)  # the worst shuffle: everything in order
    fixed = never_ascending(order, [128, 23, 16], 8, 16).view(-1)[: 3 * 8].view(3, 8)
    assert (fixed[0, 1:] < fixed[0, :-1]).any() and (fixed[1, 1:2] < fixed[1, :1]).all()
    assert fixed[2, 0] == 16  # one used block: nothing to reorder


def test_workload_inputs_match_the_contiguous_decode() -> None:
    by_name = {w.name: w for w in workloads()}
    wl = by_name["attention.paged_decode"]
    shape = wl.presets["tiny"]["gqa_bs64"]  # "gqa": block size 16
    assert isinstance(shape, PagedShape) and shape.block_size == 64
    assert wl.presets["tiny"]["gqa"].block_size == 16
    inputs = wl.make_inputs(shape, torch.float32, 0, "normal")
    assert inputs["k"].shape[1:] == (64, 2, 32) and inputs["block_table"].dtype == torch.int32
    gathered = paged.gather(inputs["k"], inputs["block_table"], inputs["kv_lens"])  # [B, Hkv, Skv, D]
    contiguous = by_name["attention.decode"]
    plain = contiguous.make_inputs(shape, torch.float32, 0, "normal")  # the contiguous decode's tensors
    for b, n in enumerate(inputs["kv_lens"].tolist()):
        assert torch.equal(gathered[b, :, :n], plain["k"][b, :, :n])
    assert wl.shape_from_inputs(inputs, shape) == shape


def test_backends_pass_or_skip_with_a_reason_and_faults_fail_naming_the_metric(harness_cli) -> None:
    run = harness_cli(
        "run",
        "-w",
        "attention.paged_decode",
        "-b",
        "cpu-reference,torch-cpu,ascend-sim,ort-cpu",
        "--dtype",
        "float16",
        "--seeds",
        "0",
        "--parity-only",
    )
    by_backend: dict[str, set[str]] = {}
    for r in run.records:
        by_backend.setdefault(r["case"]["backend"], set()).add(r["status"])
    assert by_backend["torch-cpu"] == by_backend["ascend-sim"] == by_backend["cpu-reference"] == {"passed"}
    assert by_backend["ort-cpu"] == {"skipped"}
    assert all("block_table" in r["reason"] for r in run.records if r["case"]["backend"] == "ort-cpu")
    assert run.exit_code == 0

    faults = harness_cli(
        "run",
        "--plugin",
        PAGED_FAULTS,
        "-w",
        "attention.paged_decode",
        "-b",
        "bug-paged-physical-order,bug-paged-partial-block",
        "--dtype",
        "float16",
        "--parity-only",
    )
    assert faults.exit_code == 1
    assert faults.records and {r["status"] for r in faults.records} == {"failed"}
    assert all("rel_l2" in r["reason"] for r in faults.records)
