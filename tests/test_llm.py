"""LLM workloads: the bound reference against transformers' own forward, the suite on both CPU backends,
planted bugs localized layer-wise, and user checkpoints (--model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import FAULTS

transformers = pytest.importorskip("transformers", reason="LLM workloads need transformers (llm/test extra)")

from harness.models.llm_bind import LlmModel, forward  # noqa: E402
from harness.models.llm_config import ARCHS, build_config, seeded_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_binding_matches_transformers_own_forward(arch: str) -> None:
    master = seeded_model(build_config(arch, "tiny"), seed=0)
    ids = torch.randint(0, master.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    own = forward(master, ids)  # transformers' code, float64 (it rounds router scores and rope angles to float32)
    ours = LlmModel(master, torch.float32, arch).reference_logits(ids)  # attention, rope, norms, MoE via harness.ops
    assert float((ours - own).norm() / own.norm()) < 1e-6


def test_llm_suite_passes_on_both_cpu_backends_and_reports_top1_and_kl(harness_cli, tmp_path: Path) -> None:
    out = tmp_path / "llm.jsonl"
    run = harness_cli("run", "-w", "llm.*", "-b", "cpu-reference,torch-cpu", "--dtype", "float32,bfloat16", out=out)
    assert run.exit_code == 0, run.output
    assert {r["case"]["workload"] for r in run.records} == {f"llm.{a}" for a in ARCHS}
    for r in run.records:
        p = r["parity"]
        assert 0.9 <= p["llm"]["top1_agreement"] <= 1.0 and p["llm"]["kl_mean"] >= 0
        assert len(p["greedy"]["agreement_length"]) == 2
        decode = p["decode"]  # judged teacher-forced, step by step, after the reference checked itself
        assert decode["teacher_forced"] and decode["steps"] == 8 and decode["positions"] == 2 * 8
        assert decode["self_check_rel_l2"] < 1e-12
        assert decode["median_position_rel_l2"] <= (1e-5 if r["case"]["dtype"] == "float32" else 0.05)
        if r["case"]["backend"] == "torch-cpu":
            assert r["timing"]["tokens_per_s"] > 0 and r["timing_variants"]["decode"]["tokens_per_s"] > 0
        else:  # the float64 oracle is not timed unless a run asks (--time-oracles)
            assert r["timing"] is None
    report = harness_cli("report", str(out))
    bf16 = [ln for ln in report.output.splitlines() if "bfloat16" in ln]
    assert len(bf16) == 10 and all("% /" in ln for ln in bf16)  # "top-1 / KL / greedy" filled in


def culprits(run) -> dict[str, tuple[int, str] | None]:
    out = {}
    for r in run.records:
        c = r["parity"]["layerwise"]["culprit"]
        out[f"{r['case']['workload']}/{r['case']['dtype']}"] = (c["layer"], c["kind"]) if c else None
    return out


LAYERWISE = ("--dtype", "float32,bfloat16", "--layerwise", "--parity-only", "--plugin", FAULTS)


def test_rope_in_the_wrong_style_is_localized_to_layer_0_attention(harness_cli) -> None:
    run = harness_cli("run", "-w", "llm.llama3,llm.qwen3", "-b", "bug-rope-interleaved", *LAYERWISE)
    assert run.exit_code == 1
    assert set(culprits(run).values()) == {(0, "attention")}
    assert all("layerwise.layer0.attention" in r["reason"] for r in run.records)


def test_corrupted_weight_is_localized_to_layer_2_mlp_teacher_forced(harness_cli) -> None:
    run = harness_cli("run", "-w", "llm.llama3", "-b", "bug-corrupt-layer2-mlp", *LAYERWISE)
    assert run.exit_code == 1
    assert set(culprits(run).values()) == {(2, "mlp")}
    for r in run.records:
        lw = r["parity"]["layerwise"]
        budget = lw["culprit"]["budget"]
        # Propagated mode shows every later layer off ...
        assert all(e > budget for e in lw["propagated"][2:]) and all(e <= budget for e in lw["propagated"][:2])
        # ... and the report says why they are not the culprit.
        assert "inherit layer 2's error" in lw["explanation"]
        assert [e["name"] for e in lw["teacher_forced"] if e["over"]] == ["model.layers.2.mlp"]


def test_correct_backend_flags_no_layer(harness_cli) -> None:
    run = harness_cli(
        "run", "-w", "llm.*", "-b", "torch-cpu", "--dtype", "float32,bfloat16", "--layerwise", "--parity-only"
    )
    assert run.exit_code == 0, run.output
    assert set(culprits(run).values()) == {None}


def _checkpoint(tmp_path: Path) -> Path:
    model = seeded_model(build_config("llama3", "tiny"), seed=3).float()
    path = tmp_path / "my-llama"
    model.save_pretrained(str(path))
    return path


def test_checkpoint_directory_loads_with_model(harness_cli, tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    run = harness_cli(
        "run", "-w", "llm.*", "-b", "torch-cpu", "--dtype", "float32", "--parity-only", "--model", str(path)
    )
    assert run.exit_code == 0, run.output
    assert [r["case"]["workload"] for r in run.records] == ["llm.llama3"]  # the checkpoint's architecture only
    assert str(path) in run.records[0]["shape_info"]


def test_missing_or_corrupt_checkpoint_exits_2_naming_the_path(harness_cli, tmp_path: Path) -> None:
    path = _checkpoint(tmp_path)
    weights = next(path.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    run = harness_cli("run", "-w", "llm.llama3", "-b", "torch-cpu", "--model", str(path))
    assert run.exit_code == 2 and str(weights) in run.output and "corrupt" in run.output
    (path / "config.json").unlink()
    run = harness_cli("run", "-w", "llm.llama3", "-b", "torch-cpu", "--model", str(path))
    assert run.exit_code == 2 and str(path / "config.json") in run.output and "missing" in run.output
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    run = harness_cli("run", "-w", "llm.*", "-b", "torch-cpu", "--model", str(path))
    assert run.exit_code == 2 and "none of the selected workloads" in run.output


def test_decode_fault_passes_prefill_and_fails_the_teacher_forced_decode(harness_cli) -> None:
    """Rope positions one ahead in decode steps only: prefill logits are right, every decode step is judged wrong."""
    run = harness_cli(
        "run", "-w", "llm.*", "-b", "bug-decode-rope-shift", "--plugin", FAULTS, "--dtype", "float32,bfloat16",
        "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 1 and len(run.records) == 10
    for r in run.records:
        failed = {f["metric"] for f in r["parity"]["verdict"]["failures"]}
        assert "decode.median_position_rel_l2" in failed, r["reason"]
        assert not any(m.startswith("llm.") for m in failed)  # prefill is right: only decode can catch this


def test_a_cache_that_never_reaches_the_attention_is_an_error_never_a_pass(harness_cli, monkeypatch) -> None:
    """transformers 5.24's rename made the bound attention drop the cache: the reference and the backend then
    decode the same wrong way and agree. The reference's self-check must turn every such case into an error."""
    from harness.models import llm_bind

    monkeypatch.setattr(llm_bind, "kv_cache", lambda kwargs: None)  # the cache is bypassed on purpose
    run = harness_cli("run", "-w", "llm.llama3,llm.deepseek-v3", "-b", "cpu-reference,torch-cpu", "--parity-only")
    assert run.exit_code == 3 and run.records
    for r in run.records:
        assert r["status"] == "error", r["status"]
        assert "DecodeSelfCheckError" in r["reason"] and "decode path is broken" in r["reason"]


def test_the_cache_is_found_whatever_keyword_transformers_passes_it_under() -> None:
    from transformers import DynamicCache

    from harness.models.llm_bind import kv_cache

    cache = DynamicCache()
    for keyword in ("past_key_values", "cache", "some_future_name"):
        assert kv_cache({keyword: cache, "position_ids": None}) is cache
    assert kv_cache({"position_ids": None}) is None
