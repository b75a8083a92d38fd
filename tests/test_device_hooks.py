"""Runner hooks a device backend uses: input rotation, run-time refusals, calibration and % of roofline, and the
timing switches (suite file, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.calibrate import Calibration, load_calibration
from harness.suites import SuiteError, load_suite_file
from tests.conftest import plugin

VARIANTS = plugin("cpu_variants")


def test_the_timed_call_rotates_over_copies_of_the_inputs_when_the_backend_asks(harness_cli) -> None:
    run = harness_cli(
        "run", "--suite", "smoke", "-w", "attention.prefill", "--shape", "gqa", "--dtype", "float32",
        "--distribution", "normal", "-b", "rotating-cpu", "--plugin", VARIANTS,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    (record,) = run.records
    assert record["status"] == "passed"
    assert record["timing"]["input_sets"] == 3
    assert record["implementation"]["distinct_q"] >= 3  # the timed calls really saw three different tensors


def test_a_refusal_found_on_trying_is_a_skip_with_its_reason(harness_cli) -> None:
    run = harness_cli(
        "run", "--suite", "smoke", "-w", "attention.prefill", "--dtype", "float32", "--distribution", "normal",
        "-b", "refusing-cpu", "--plugin", VARIANTS,
    )  # fmt: skip
    assert run.exit_code == 3, run.output  # every case refused: the run tested nothing
    statuses = {r["case"]["shape"]: (r["status"], r["reason"]) for r in run.records}
    assert statuses["gqa"] == ("skipped", "refusing-cpu: this kernel takes no GQA (Hq != Hkv)")
    assert statuses["mqa"][0] == "skipped"  # MQA is GQA with one kv head


def test_calibrate_stores_ceilings_that_runs_turn_into_percent_of_roofline(
    harness_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_CALIBRATION_DIR", str(tmp_path / "cal"))
    cal_run = harness_cli(
        "calibrate", "-b", "torch-cpu", "--matmul-n", "128", "--copy-mib", "8", "--time-budget", "0.05"
    )
    assert cal_run.exit_code == 0, cal_run.output
    (stored,) = (tmp_path / "cal").glob("torch-cpu--*.json")
    cal = Calibration(**json.loads(stored.read_text()))
    assert set(cal.matmul_tflops) == {"bfloat16", "float16", "float32"}
    assert all(v > 0 for v in cal.matmul_tflops.values()) and cal.copy_gbps > 0 and cal.read_gbps > 0
    assert load_calibration("torch-cpu", cal.device_name, tmp_path / "cal") is not None
    run = harness_cli(
        "run", "--suite", "smoke", "-w", "attention.prefill", "--shape", "gqa", "--dtype", "float32",
        "--distribution", "normal", "-b", "torch-cpu",
    )  # fmt: skip
    (record,) = run.records
    roof = record["timing"]["roofline"]
    assert roof["peak_tflops"] == cal.matmul_tflops["float32"]
    floor = max(
        record["timing"]["flops"] / (roof["peak_tflops"] * 1e12), record["timing"]["bytes"] / (cal.bandwidth_gbps * 1e9)
    )
    assert roof["pct"] == pytest.approx(100 * floor / (record["timing"]["median_ns"] * 1e-9))
    report = harness_cli("report", str(tmp_path / "run0.jsonl"))
    assert "% roof" in report.output


def test_calibrating_an_unavailable_backend_is_a_usage_error(harness_cli) -> None:
    run = harness_cli("calibrate", "-b", "ort-cuda")
    assert run.exit_code == 2
    assert "unavailable" in run.output


def test_cli_timing_switches_reach_the_record(harness_cli) -> None:
    run = harness_cli(
        "run", "--suite", "smoke", "-w", "attention.prefill", "--shape", "gqa", "--dtype", "float32",
        "--distribution", "normal", "-b", "torch-cpu", "--no-graphs", "--cold-cache",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert run.records[0]["timing"]["method"] == "perf_counter_ns"  # the CPU timer has no graphs or L2 to flush


def test_suite_files_take_the_boolean_timing_switches(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[timing]\ngraphs = false\ncold_cache = true\nbudget_s = 0.1\n")
    suite = load_suite_file(good)
    assert suite.backend_options == ("graphs=0", "cold_cache=1") and suite.timing.budget_s == 0.1
    bad = tmp_path / "bad.toml"
    bad.write_text("[timing]\ngraphs = 1\n")
    with pytest.raises(SuiteError, match=r"bad.toml:2: key 'timing.graphs' must be true or false"):
        load_suite_file(bad)
