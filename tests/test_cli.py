"""The command line end to end: exit codes, messages for bad input, user tensors, saved outputs, reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.workload import WorkloadRegistry
from tests.conftest import FAULTS, plugin

pytestmark = pytest.mark.slow


def test_smoke_suite_passes_on_both_cpu_backends(harness_cli) -> None:
    run = harness_cli("run", "--suite", "smoke", "-b", "cpu-reference,torch-cpu")
    assert run.exit_code == 0, run.output
    assert {r["status"] for r in run.records} == {"passed"}
    workloads = {r["case"]["workload"] for r in run.records}
    assert workloads == set(WorkloadRegistry.discover().names())
    assert {
        "attention.prefill",
        "attention.chunked_prefill",
        "attention.decode",
        "attention.sliding_window",
    } <= workloads
    assert {"moe.route", "moe.experts", "moe.layer"} <= workloads
    assert {r["case"]["dtype"] for r in run.records} == {"float32", "bfloat16", "float16", "w8a8", "fp8", "fp8-block"}
    first = run.records[0]
    assert first["schema_version"] == 2 and first["run_id"] and first["time_utc"].endswith("Z")
    assert first["backend_options"] == {}  # created without --backend-option
    for key in ("host", "python", "torch", "git_commit", "backend"):
        assert key in first["environment"]
    timed = [r for r in run.records if r["timing"]]
    assert timed and all(r["case"]["inputs"] == "normal" for r in timed)
    t = timed[0]["timing"]
    assert t["samples_ns"] and t["median_ns"] > 0 and t["tflops"] > 0 and t["gbps"] > 0
    assert t["ci95_low_ns"] <= t["median_ns"] <= t["ci95_high_ns"]
    assert "torch-cpu" in run.output and "pass" in run.output  # the table


def test_unknown_backend_exits_2_naming_the_known_ones(harness_cli) -> None:
    run = harness_cli("run", "-b", "nosuch")
    assert run.exit_code == 2
    assert "'nosuch'" in run.output and "cpu-reference" in run.output and "torch-cpu" in run.output
    assert run.records == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("-w", "nomatch.*"), "no workload matches 'nomatch.*'"),
        (("--dtype", "float8"), "unknown dtype 'float8'"),
        (("--preset", "huge"), "no preset 'huge'"),
        (("--distribution", "cauchy"), "unknown input distribution 'cauchy'"),
        (("--seeds", "a,b"), "expected a comma list of integers"),
        (("--shape", "llama9"), "unknown shape 'llama9' for the selected workloads; shapes: decode, deepseek-v3, gqa"),
        (("--suite", "nosuite"), "unknown suite 'nosuite'"),
    ],
)
def test_bad_selection_exits_2(harness_cli, args: tuple[str, ...], needle: str) -> None:
    run = harness_cli("run", *args)
    assert run.exit_code == 2
    assert needle in run.output


def test_unavailable_backend_is_listed_with_reason_and_skipped(harness_cli) -> None:
    listed = harness_cli("list", "--plugin", plugin("unavailable"))
    assert listed.exit_code == 0
    line = next(ln for ln in listed.output.splitlines() if "needs-missing-sdk" in ln)
    assert "unavailable" in line
    run = harness_cli(
        "run", "--plugin", plugin("unavailable"), "-b", "needs-missing-sdk,torch-cpu", "-w", "attention.decode"
    )
    assert run.exit_code == 0
    skipped = [r for r in run.records if r["case"]["backend"] == "needs-missing-sdk"]
    assert skipped and all(r["status"] == "skipped" for r in skipped)
    assert all("vendor SDK not importable" in r["reason"] for r in skipped)
    assert all(r["status"] == "passed" for r in run.records if r["case"]["backend"] == "torch-cpu")


def test_duplicate_backend_name_fails_loudly(harness_cli) -> None:
    run = harness_cli("run", "--plugin", plugin("duplicate_name"), "-b", "torch-cpu")
    assert run.exit_code == 2
    assert "registered twice" in run.output and "duplicate_name.py" in run.output


def _attention_inputs(path: Path, **shapes: tuple[int, ...]) -> Path:
    tensors = {name: torch.randn(*shape) for name, shape in shapes.items()}
    save_file(tensors, str(path))
    return path


def test_user_inputs_run_and_wrong_shape_exits_2(harness_cli, tmp_path: Path) -> None:
    good = _attention_inputs(tmp_path / "good.safetensors", q=(1, 4, 8, 16), k=(1, 2, 8, 16), v=(1, 2, 8, 16))
    run = harness_cli("run", "-w", "attention.prefill", "-b", "torch-cpu", "--dtype", "float32", "--inputs", str(good))
    assert run.exit_code == 0, run.output
    assert [r["case"]["shape"] for r in run.records] == ["user"]
    assert run.records[0]["shape_info"] == "B1 H4/2 Sq8 Skv8 D16"

    bad = _attention_inputs(tmp_path / "bad.safetensors", q=(1, 4, 8, 16), k=(1, 2, 8, 32), v=(1, 2, 8, 16))
    run = harness_cli("run", "-w", "attention.prefill", "-b", "torch-cpu", "--inputs", str(bad))
    assert run.exit_code == 2
    assert "input k" in run.output and "[1, Hkv, Skv, 16]" in run.output and "[1, 2, 8, 32]" in run.output

    decode = _attention_inputs(tmp_path / "dec.safetensors", q=(1, 4, 3, 16), k=(1, 2, 8, 16), v=(1, 2, 8, 16))
    run = harness_cli("run", "-w", "attention.decode", "-b", "torch-cpu", "--inputs", str(decode))
    assert (
        run.exit_code == 2 and "input q: expected shape [1, 4, 1, 16]" in run.output and "[1, 4, 3, 16]" in run.output
    )

    named = _attention_inputs(tmp_path / "named.safetensors", query=(1, 4, 8, 16), k=(1, 2, 8, 16), v=(1, 2, 8, 16))
    run = harness_cli("run", "-w", "attention.prefill", "-b", "torch-cpu", "--inputs", str(named))
    assert (
        run.exit_code == 2
        and "missing q" in run.output
        and "unknown query" in run.output
        and "accepted: q, k, v" in run.output
    )

    run = harness_cli("run", "-w", "attention.*", "-b", "torch-cpu", "--inputs", str(good))
    assert run.exit_code == 2 and "runs one workload" in run.output

    ints = tmp_path / "ints.safetensors"
    save_file(
        {"q": torch.ones(1, 4, 8, 16, dtype=torch.int32), "k": torch.randn(1, 2, 8, 16), "v": torch.randn(1, 2, 8, 16)},
        str(ints),
    )
    run = harness_cli("run", "-w", "attention.prefill", "-b", "torch-cpu", "--inputs", str(ints))
    assert run.exit_code == 2 and "input q: expected a floating dtype, got torch.int32" in run.output


def test_nan_inputs_are_reported_not_crashed_on(harness_cli, tmp_path: Path) -> None:
    q = torch.randn(1, 2, 4, 8)
    q[0, 1, 2, 3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({"q": q, "k": torch.randn(1, 2, 4, 8), "v": torch.randn(1, 2, 4, 8)}, str(path))
    run = harness_cli("run", "-w", "attention.prefill", "-b", "torch-cpu", "--dtype", "float32", "--inputs", str(path))
    assert run.exit_code == 3
    assert run.records[0]["status"] == "error" and "q has 1 NaN" in run.records[0]["reason"]


def test_saved_outputs_judged_on_another_machine(harness_cli, tmp_path: Path) -> None:
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    saved = machine_a / "saved"
    args = ("-w", "attention.chunked_prefill,attention.decode", "--dtype", "float32,bfloat16", "--parity-only")
    run = harness_cli("run", "-b", "torch-cpu", *args, "--save-outputs", str(saved))
    assert run.exit_code == 0
    shutil.copytree(saved, machine_b / "from-a")  # "another machine": only the directory travels
    shutil.rmtree(machine_a)
    good = harness_cli(
        "run", "--plugin", FAULTS, "-b", "blockwise-online", *args, "--against", str(machine_b / "from-a")
    )
    assert good.exit_code == 0, good.output
    assert len(good.records) == len(run.records)
    assert {r["parity"]["verdict"]["mode"] for r in good.records} == {"against torch-cpu"}
    assert all(r["parity"]["baseline"]["source"] == str(machine_b / "from-a") for r in good.records)
    bad = harness_cli(
        "run",
        "--plugin",
        FAULTS,
        "-b",
        "bug-dropped-token",
        *args,
        "--against",
        str(machine_b / "from-a"),
    )
    assert bad.exit_code == 1
    assert {r["status"] for r in bad.records} == {"failed"}
    assert all("_vs_torch-cpu" in r["reason"] for r in bad.records)


def test_against_dir_with_two_backends_is_ambiguous(harness_cli, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    harness_cli(
        "run", "-b", "torch-cpu,cpu-reference", "-w", "attention.decode", "--parity-only", "--save-outputs", str(saved)
    )
    run = harness_cli("run", "-b", "torch-cpu", "-w", "attention.decode", "--against", str(saved))
    assert run.exit_code == 2 and "exactly one backend" in run.output and "cpu-reference, torch-cpu" in run.output


def test_against_backend_name(harness_cli) -> None:
    run = harness_cli(
        "run", "-b", "torch-cpu", "-w", "attention.prefill", "--against", "cpu-reference", "--parity-only"
    )
    assert run.exit_code == 0, run.output
    assert {r["parity"]["verdict"]["mode"] for r in run.records} == {"against cpu-reference"}
    run = harness_cli("run", "-b", "torch-cpu", "--against", "not-a-backend-or-dir")
    assert run.exit_code == 2 and "neither a directory" in run.output


def test_report_formats(harness_cli, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    harness_cli("run", "-b", "torch-cpu", "-w", "attention.decode", "--dtype", "float32", out=out)
    md = harness_cli("report", str(out))
    assert md.exit_code == 0
    lines = md.output.strip().splitlines()
    assert lines[0].startswith("| case | dtype | backend | verdict") and len(lines) == 4  # header, rule, gqa, mqa
    assert "attention.decode tiny/gqa" in md.output and "pass 2/2" in md.output
    csv_out = harness_cli("report", str(out), "--format", "csv")
    header = csv_out.output.splitlines()[0].split(",")
    assert header[:5] == ["workload", "preset", "shape", "dtype", "backend"] and "median_us" in header
    assert len(csv_out.output.strip().splitlines()) == 3


def test_suite_file_and_its_errors(harness_cli, tmp_path: Path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text(
        'workloads = ["attention.decode"]\ndtypes = ["float32"]\nbackends = ["torch-cpu"]\n'
        'seeds = [3, 4]\ninputs = "normal"\n[timing]\nbudget_s = 0.01\n'
    )
    run = harness_cli("run", "--suite", str(good))
    assert run.exit_code == 0, run.output
    assert sorted({r["case"]["seed"] for r in run.records}) == [3, 4] and len(run.records) == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('workloads = ["attention.decode"]\n\ndtype = ["float32"]\n')
    run = harness_cli("run", "--suite", str(bad))
    assert run.exit_code == 2 and "bad.toml:3: key 'dtype' is not a suite setting" in run.output


def test_env_and_python_dash_m() -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", "env"], capture_output=True, text=True, check=True)
    env = json.loads(proc.stdout)
    assert env["host"]["torch"] and env["backends"]["torch-cpu"]["available"] is True


def test_budget_override_tightens_the_verdict(harness_cli) -> None:
    args = ("run", "-b", "torch-cpu", "-w", "attention.decode", "--dtype", "bfloat16", "--parity-only")
    assert harness_cli(*args).exit_code == 0
    strict = harness_cli(*args, "--budget", "rel_l2=1e-6")
    assert strict.exit_code == 1
    assert all(r["parity"]["budget"]["rel_l2"] == 1e-6 for r in strict.records)
    assert all("rel_l2 = " in r["reason"] and "budget 1e-06" in r["reason"] for r in strict.records)
    bad = harness_cli(*args, "--budget", "rel=1")
    assert bad.exit_code == 2 and "FIELD one of: atol, max_outside, rel_l2" in bad.output


def test_report_reads_a_file_whose_writer_was_killed(harness_cli, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    harness_cli("run", "-b", "torch-cpu", "-w", "attention.decode", "--dtype", "float32", "--parity-only", out=out)
    text = out.read_text()
    out.write_text(text + text.splitlines()[0][:40])  # a half-written record at the end
    md = harness_cli("report", str(out))
    assert md.exit_code == 0 and "pass 2/2" in md.output


def test_against_ratio_sets_the_bar(harness_cli) -> None:
    args = ("run", "-b", "torch-cpu", "-w", "moe.layer", "--dtype", "bfloat16", "--parity-only")
    strict = harness_cli(*args, "--against", "cpu-reference", "--against-ratio", "1")
    loose = harness_cli(*args, "--against", "cpu-reference", "--against-ratio", "10")
    # bfloat16 torch-cpu rounds intermediates the oracle does not: worse than the oracle, within 10x of it.
    assert strict.exit_code == 1 and loose.exit_code == 0
    assert all("forced.rel_l2_vs_cpu-reference" in r["reason"] for r in strict.records)


def test_moe_user_inputs(harness_cli, tmp_path: Path) -> None:
    from harness.models.moe import TINY, MoeShape, _weights

    tensors = _weights(MoeShape(t=24, dims=TINY["deepseek-v3"]), torch.float32, 0, "normal")
    good = tmp_path / "moe.safetensors"
    save_file(tensors, str(good))
    args = ("run", "-w", "moe.layer", "-b", "torch-cpu", "--shape", "deepseek-v3")
    run = harness_cli(*args, "--dtype", "float32,bfloat16", "--inputs", str(good))
    assert run.exit_code == 0, run.output
    assert all(r["shape_info"].startswith("T24 H64 F32 E16 k4 sigmoid_group_topk") for r in run.records)
    assert run.records[1]["parity"]["routing"]["tokens"] == 24
    tensors["bias"] = tensors["bias"][:5].contiguous()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    run = harness_cli(*args, "--inputs", str(bad))
    assert run.exit_code == 2 and "route input bias: expected shape [16], got [5]" in run.output


def test_llm_cases_without_transformers_are_skipped_with_the_reason(harness_cli, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    run = harness_cli("run", "-w", "llm.llama3", "-b", "torch-cpu", "--dtype", "float32", "--parity-only")
    assert run.exit_code == 3  # every case skipped: the run tested nothing
    [record] = run.records
    assert record["status"] == "skipped" and "needs transformers (pip install 'harness[llm]')" in record["reason"]
