"""The two-machine workflow (README): `harness run --save-outputs DIR` on the source platform, then, with only
DIR copied over, `harness run --against DIR` on the target, for every workload family. The target rebuilds an
LLM's model itself (seeded weights or --model), and judges its own outputs by the same metrics as the saved
ones (MoE free routing, LLM decode steps), each error against the source's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.cli import main
from tests.conftest import FAULTS

pytest.importorskip("transformers", reason="LLM workloads need transformers (llm/test extra)")

# One shape of each family (tiny, float32, parity only): attention, the three MoE workloads, a seeded LLM.
SELECTION = (
    *("-w", "attention.decode,moe.*,llm.llama3", "--preset", "tiny", "--dtype", "float32"),
    *("--distribution", "normal", "--shape", "gqa,deepseek-v3,mixtral,llama3", "--parity-only", "--no-table"),
)
CASES = 8  # attention 1, moe.route 2, moe.experts 2, moe.layer 2, llm 1


def run(*args: str | Path, out: Path) -> tuple[Result, dict[str, dict[str, Any]]]:
    """`harness run ARGS --out OUT` as a user types it: the result and the records by case key."""
    result = CliRunner().invoke(main, ["run", *map(str, args), "--out", str(out)])
    assert "Traceback" not in result.output, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result, {r["case"]["key"].split("@")[0]: r for r in records}


def carried(saved: Path, to: Path) -> Path:
    """The saved directory as the other machine gets it: a copy, the original gone."""
    shutil.copytree(saved, to)
    shutil.rmtree(saved)
    return to


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Machine A: torch-cpu's run of every family, saved; only the directory travels to machine B."""
    a, b = tmp_path_factory.mktemp("machine-a"), tmp_path_factory.mktemp("machine-b")
    result, records = run(*SELECTION, "-b", "torch-cpu", "--save-outputs", a / "saved", out=a / "a.jsonl")
    assert result.exit_code == 0, result.output
    assert len(records) == CASES
    return carried(a / "saved", b / "from-a")


def tensors(saved: Path, workload: str) -> dict[str, list[int]]:
    path = next(saved.glob(f"{workload}__*/torch-cpu.safetensors"))
    return {name: list(t.shape) for name, t in load_file(str(path)).items()}


def test_the_source_saves_what_each_workload_is_judged_by(source: Path) -> None:
    assert set(tensors(source, "attention.decode")) == {"out"}
    assert set(tensors(source, "llm.llama3")) == {"out", "decode.logits", "decode.chosen"}
    assert tensors(source, "llm.llama3")["decode.chosen"] == [2, 9]  # greedy after the prompt and 8 steps
    assert set(tensors(source, "moe.layer")) >= {"out", "free", "routing.weights", "routing.ids"}
    assert set(tensors(source, "moe.route")) >= {"routing.weights", "routing.ids"}


@pytest.mark.parametrize("target", ["torch-cpu", "ascend-sim"])
def test_every_family_passes_against_the_saved_run(source: Path, tmp_path: Path, target: str) -> None:
    result, records = run(*SELECTION, "-b", target, "--against", source, out=tmp_path / "b.jsonl")
    assert result.exit_code == 0, result.output
    assert len(records) == CASES and {r["status"] for r in records.values()} == {"passed"}
    for r in records.values():
        assert r["parity"]["verdict"]["mode"] == "against torch-cpu"
        assert r["parity"]["baseline"]["source"] == str(source)
    # the workloads' own statistics were judged against the source's same statistics, not only the primary
    [llm] = [r for k, r in records.items() if k.startswith("llm.")]
    assert {"llm.kl_mean", "decode.median_position_rel_l2", "decode.kl_mean"} <= set(llm["parity"]["baseline_checks"])
    layers = [r for k, r in records.items() if k.startswith("moe.layer/")]
    assert all("e2e_agreeing.rel_l2" in r["parity"]["baseline_checks"] for r in layers)


@pytest.mark.parametrize(
    ("fault", "families", "says"),
    [
        ("bug-moe-ids-off-by-one", ("moe.route", "moe.layer"), "routing_unexplained"),  # experts picked wrongly
        (
            "bug-moe-no-renorm",
            ("moe.route", "moe.layer"),
            "routing_weights.rel_l2_vs_torch-cpu",
        ),  # right experts, wrong weights
        ("bug-dropped-token", ("llm.llama3", "attention.decode"), "rel_l2_vs_torch-cpu"),  # the LLM attends too
        ("bug-decode-rope-shift", ("llm.llama3",), "decode.kl_mean_vs_torch-cpu"),  # prefill right, decode wrong
    ],
)
def test_a_fault_on_the_target_fails_against_the_saved_run(
    source: Path, tmp_path: Path, fault: str, families: tuple[str, ...], says: str
) -> None:
    result, records = run(*SELECTION, "--plugin", FAULTS, "-b", fault, "--against", source, out=tmp_path / "b.jsonl")
    assert result.exit_code == 1, result.output
    failed = {k for k, r in records.items() if r["status"] == "failed"}
    assert failed and {k.split("/")[0] for k in failed} == set(families)
    assert all(says in records[k]["reason"] for k in failed if k.startswith(families[-1]))
    judged = [records[k]["parity"] for k in failed if "metrics" in records[k]["parity"]]  # no routing agrees: none
    assert judged and all(p["baseline"]["source"] == str(source) for p in judged)


def test_a_checkpoint_is_rebuilt_on_the_target_and_must_be_the_sources(tmp_path: Path) -> None:
    from harness.models.llm_config import build_config, seeded_model

    checkpoint = tmp_path / "my-llama"
    seeded_model(build_config("llama3", "tiny"), seed=3).float().save_pretrained(str(checkpoint))
    args = ("-w", "llm.llama3", "--dtype", "float32", "--parity-only", "--no-table")
    saved = tmp_path / "a" / "saved"
    result, _ = run(*args, "-b", "torch-cpu", "--model", checkpoint, "--save-outputs", saved, out=tmp_path / "a.jsonl")
    assert result.exit_code == 0, result.output
    saved = carried(saved, tmp_path / "b" / "from-a")
    result, records = run(*args, "-b", "ort-cpu", "--model", checkpoint, "--against", saved, out=tmp_path / "b.jsonl")
    assert result.exit_code == 0, result.output
    [record] = records.values()
    assert record["status"] == "passed" and str(checkpoint) in record["shape_info"]
    # the target without --model builds seeded weights: not the function the source ran, said as such
    result, records = run(*args, "-b", "torch-cpu", "--against", saved, out=tmp_path / "c.jsonl")
    assert result.exit_code == 3, result.output
    [record] = records.values()
    assert record["status"] == "error" and "do not run the same function" in record["reason"]
    assert "inputs.safetensors" in record["reason"] and "--model" in record["reason"]


def test_a_directory_of_the_older_layout(source: Path, tmp_path: Path) -> None:
    """Attention's old files (`out` alone, no reference norm) still read; a MoE layer's old file (the forced
    output alone) errors naming the file and what is missing."""
    old = tmp_path / "old"
    shutil.copytree(source, old)
    for path in old.glob("*/*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            case = (f.metadata() or {})["case"]
        kept = load_file(str(path))
        if path.name != "inputs.safetensors":
            kept = {"out": kept["out"]}
        save_file(kept, str(path), metadata={"case": case})
    result, records = run(*SELECTION, "-b", "torch-cpu", "--against", old, out=tmp_path / "b.jsonl")
    assert result.exit_code == 3, result.output
    assert {k for k, r in records.items() if r["status"] == "passed"} == {
        k for k in records if k.startswith(("attention.", "moe.experts"))
    }
    [layer, *_] = [r for k, r in records.items() if k.startswith("moe.layer/")]
    assert layer["status"] == "error" and "torch-cpu.safetensors holds no tensor 'free'" in layer["reason"]
    assert "save the source run again" in layer["reason"]
