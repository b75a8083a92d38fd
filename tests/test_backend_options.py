"""Backend options: declared by a backend, passed by `harness run --backend-option`, parsed into its constructor,
recorded; bad ones are exit 2 naming what is accepted. And the math modes `harness calibrate` asks a backend for."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.backend import default_registry
from harness.backend_options import BackendOptionError, OptionSetting, resolve
from harness.calibrate import calibrate
from harness.suites import load_suite_file
from harness.timing import TimingConfig
from tests.conftest import plugin

OPTIONED = plugin("with_options")
ONE_CASE = ("-w", "attention.prefill", "--shape", "gqa", "--dtype", "float32", "--distribution", "normal")


def test_create_parses_options_into_the_constructor_and_leaves_plain_backends_alone() -> None:
    registry = default_registry([OPTIONED])
    backend = registry.create("optioned-cpu", {"bias": "0.5", "exact": "off"})
    assert (backend.bias, backend.exact) == (0.5, False)
    default = registry.create("optioned-cpu")
    assert (default.bias, default.exact) == (0.0, True)
    assert type(registry.create("torch-cpu", None)).__name__ == "TorchCpu"  # a constructor without arguments
    with pytest.raises(BackendOptionError, match=r"backend torch-cpu has no option 'bias'; it accepts: none"):
        registry.create("torch-cpu", {"bias": "1"})
    with pytest.raises(BackendOptionError, match=r"option bias='x'.*accepts a number"):
        registry.create("optioned-cpu", {"bias": "x"})


def test_settings_apply_to_the_selected_backends_that_declare_them() -> None:
    registry = default_registry([OPTIONED])
    selected = ["torch-cpu", "optioned-cpu", "cuda"]
    got = resolve(registry, selected, [OptionSetting.parse("bias=2"), OptionSetting.parse("cuda:tf32=yes")])
    assert got == {"optioned-cpu": {"bias": "2"}, "cuda": {"tf32": "yes"}}
    alias = OptionSetting("graphs", "0", alias=True)  # --no-graphs: ignored where no backend takes it
    assert resolve(registry, ["torch-cpu"], [alias]) == {}
    with pytest.raises(BackendOptionError, match=r"no selected backend declares option 'graphs'"):
        resolve(registry, ["torch-cpu"], [OptionSetting.parse("graphs=0")])


def test_a_suite_entry_or_alias_with_an_unknown_key_is_an_error_not_ignored() -> None:
    registry = default_registry([OPTIONED])
    suite_entry = replace(OptionSetting.parse("tf23=1", source="suite backend_options"), alias=True)
    with pytest.raises(BackendOptionError, match=r"suite backend_options tf23=1: no selected backend declares"):
        resolve(registry, ["torch-cpu"], [suite_entry])
    qualified = replace(OptionSetting.parse("cuda:tf23=1", source="suite backend_options"), alias=True)
    with pytest.raises(BackendOptionError, match=r"backend cuda has no option 'tf23'"):
        resolve(registry, ["torch-cpu"], [qualified])
    gpu_suite = replace(OptionSetting.parse("tf32=1", source="suite backend_options"), alias=True)
    assert resolve(registry, ["torch-cpu"], [gpu_suite]) == {}  # a GPU suite run on CPU backends: nothing to set


def test_a_process_wide_option_must_agree_across_the_backends_of_a_run() -> None:
    """torch's TF32 flags are global: cuda with tf32=1 beside cuda-math at 0 would record a mode it did not run."""
    registry = default_registry()
    with pytest.raises(
        BackendOptionError, match=r"option tf32 is one setting for the whole process.*cuda=1, cuda-math=0"
    ):
        resolve(registry, ["cuda", "cuda-math"], [OptionSetting.parse("cuda:tf32=1")])
    assert resolve(registry, ["cuda", "cuda-math"], [OptionSetting.parse("tf32=1")]) == {
        "cuda": {"tf32": "1"},
        "cuda-math": {"tf32": "1"},
    }
    assert resolve(registry, ["cuda", "torch-cpu"], [OptionSetting.parse("cuda:tf32=1")]) == {"cuda": {"tf32": "1"}}


def test_an_option_reaches_the_backend_and_its_record(harness_cli) -> None:
    good = harness_cli("run", "--plugin", OPTIONED, "-b", "optioned-cpu", *ONE_CASE, "--parity-only")
    assert good.exit_code == 0, good.output
    assert good.records[0]["environment"]["backend"]["bias"] == 0.0
    bad = harness_cli(
        "run", "--plugin", OPTIONED, "-b", "optioned-cpu", *ONE_CASE, "--parity-only", "--backend-option", "bias=1"
    )
    assert bad.exit_code == 1, bad.output
    assert bad.records[0]["environment"]["backend"]["bias"] == 1.0


@pytest.mark.slow
def test_isolated_children_get_the_options(harness_cli) -> None:
    run = harness_cli(
        "run", "--plugin", OPTIONED, "-b", "optioned-cpu", *ONE_CASE, "--parity-only", "--isolate",
        "--backend-option", "optioned-cpu:bias=1",
    )  # fmt: skip
    assert run.exit_code == 1, run.output
    assert run.records[0]["environment"]["backend"]["bias"] == 1.0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("tf32=1", "--backend-option tf32=1: no selected backend declares option 'tf32'; the selected backends"),
        ("cuda:tf32=2", "backend cuda option tf32='2'"),
        ("torch-cpu:tf32=1", "backend torch-cpu has no option 'tf32'; it accepts: none"),
        ("tf32", "expected [BACKEND:]KEY=VALUE"),
    ],
)
def test_bad_options_are_usage_errors_naming_what_is_accepted(harness_cli, option: str, message: str) -> None:
    run = harness_cli("run", "-b", "torch-cpu", *ONE_CASE, "--backend-option", option)
    assert run.exit_code == 2
    assert message in run.output
    assert len(run.output.strip().splitlines()) == 1 and "Traceback" not in run.output


def test_suite_files_set_backend_options(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('backend_options = ["cuda:tf32=1"]\n[timing]\ncold_cache = true\n')
    assert load_suite_file(path).backend_options == ("cold_cache=1", "cuda:tf32=1")


def test_calibrate_measures_each_math_mode_the_backend_names_in_its_context() -> None:
    backend = default_registry([OPTIONED]).create("optioned-cpu")
    entered = sys.modules[type(backend).__module__].ENTERED
    entered.clear()
    config = TimingConfig(budget_s=0.01, warmup_s=0.001, min_samples=2)
    cal = calibrate(backend, matmul_n=64, copy_bytes=1 << 16, config=config, small_n={"float16": 32})
    assert set(cal.matmul_tflops) == {"float32", "bfloat16", "float16", "float32_noted"}
    assert cal.matmul_n["float16"] == 32 and cal.matmul_n["float32_noted"] == 64
    assert entered == ["float32_noted"]  # measured inside the mode's own context
    cal.matmul_tflops.update(float32=1.0, float32_noted=2.0)
    assert cal.roofline("float32", 2e12, 0, 1.0, mode=backend.math_mode("float32"))["peak_tflops"] == 2.0
    assert cal.roofline("float32", 2e12, 0, 1.0, mode="not-measured")["peak_tflops"] == 1.0
