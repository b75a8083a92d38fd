"""The front door: a fast --help, thread discipline, what --parity-only skips, the suite's exclude list, and an
end-of-run summary a person can read at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.suites import BUILTIN_SUITES, SuiteError, load_suite_file, parse_threads, resolve_threads
from tests.conftest import FAULTS, plugin, skipped_record


def _imports_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], set()),
        (["run", "--help"], set()),
        (["report", "--help"], set()),
        (["run", "--dtype", "fp16"], {"rich"}),  # bad input answered before anything heavy
        (["list"], {"rich", "numpy", "onnxruntime"}),  # ORT's probe imports it; torch is not needed to list
    ],
)
def test_help_list_and_option_errors_import_no_torch(argv: list[str], allowed: set[str]) -> None:
    code = (
        "import contextlib, io\nfrom harness.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass"
    )
    loaded = _imports_after(code)
    assert "harness.cli" in loaded
    assert not ({"torch", "numpy", "rich", "onnxruntime", "transformers"} - allowed) & loaded


def test_threads_parse_and_resolve() -> None:
    assert parse_threads(3) == 3 and parse_threads("2") == 2 and parse_threads("auto") == 0
    assert resolve_threads(0) == len(os.sched_getaffinity(0)) and resolve_threads(2) == 2
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(SuiteError, match="whole number >= 1 or 'auto'"):
            parse_threads(bad)
    assert BUILTIN_SUITES["smoke"].threads == 1 and BUILTIN_SUITES["ci"].threads == 1


def test_threads_are_applied_and_recorded(harness_cli) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        run = harness_cli("run", "-w", "attention.decode", "-b", "torch-cpu", "--dtype", "float32", "--threads", "2")
        assert run.exit_code == 0, run.output
        assert {r["threads"] for r in run.records} == {2}
        assert {r["environment"]["backend"]["torch_threads"] for r in run.records} == {2}
        bad = harness_cli("run", "-b", "torch-cpu", "--threads", "0")
        assert bad.exit_code == 2 and "--threads: threads must be a whole number >= 1 or 'auto'" in bad.output
    finally:
        torch.set_num_threads(before)


def test_parity_only_skips_determinism_unless_asked_and_oracles_are_timed_only_on_request(harness_cli) -> None:
    args = ("run", "-w", "attention.prefill", "-b", "cpu-reference,torch-cpu", "--dtype", "float32")
    quick = harness_cli(*args, "--parity-only")
    assert quick.exit_code == 0 and {r["parity"]["deterministic"] for r in quick.records} == {None}
    asked = harness_cli(*args, "--parity-only", "--determinism")
    assert {r["parity"]["deterministic"] for r in asked.records} == {True}
    timed = harness_cli(*args, "--distribution", "normal", "--time-budget", "0.01")
    by_backend = {r["case"]["backend"]: r for r in timed.records}
    assert by_backend["torch-cpu"]["timing"] and by_backend["cpu-reference"]["timing"] is None
    oracle = harness_cli(*args, "--distribution", "normal", "--time-budget", "0.01", "--time-oracles")
    assert all(r["timing"] for r in oracle.records)


def test_smoke_exports_only_the_cheapest_llm_graphs_and_says_so(harness_cli, tmp_path: Path) -> None:
    from harness.backend import default_registry
    from harness.runner import Runner, RunOptions
    from harness.workload import WorkloadRegistry

    runner = Runner(default_registry(), WorkloadRegistry.discover(), RunOptions(), "plan")
    keys = {c.key for c in runner.plan(BUILTIN_SUITES["smoke"])}
    assert any(k.startswith("llm.llama3/") and k.endswith("@ort-cpu") for k in keys)
    assert not any(k.startswith("llm.qwen3-moe/") and "@ort-" in k for k in keys)
    assert any(k.startswith("llm.qwen3-moe/") and k.endswith("@torch-cpu") for k in keys)
    assert runner.excluded > 0 and "only for llm.llama3" in BUILTIN_SUITES["smoke"].description
    suite = tmp_path / "mine.toml"
    suite.write_text('workloads = ["attention.decode"]\nexclude = ["*/float16/*"]\nthreads = "auto"\n')
    mine = load_suite_file(suite)
    assert mine.exclude == ("*/float16/*",) and mine.threads == 0
    run = harness_cli("run", "--suite", str(suite), "-b", "torch-cpu", "--parity-only")
    assert run.exit_code == 0 and run.records
    assert "float16" not in {r["case"]["dtype"] for r in run.records}
    assert "cases left out by the suite's exclude list" in run.output


def test_summary_fits_80_columns_and_never_cuts_a_reason(harness_cli, monkeypatch) -> None:
    """One block per backend, unavailable backends on their own lines with the whole reason, failing cases
    listed with the whole verdict: at 80 columns only case names may shorten."""
    monkeypatch.setenv("COLUMNS", "80")
    run = harness_cli(
        "run", "-w", "attention.decode,attention.chunked_prefill", "-b",
        "torch-cpu,bug-top-left-causal,needs-missing-sdk", "--plugin", FAULTS, "--plugin", plugin("unavailable"),
        "--dtype", "float32", "--time-budget", "0.01",
    )  # fmt: skip
    assert run.exit_code == 1
    lines = run.output.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    text = " ".join(" ".join(line.split()) for line in lines)  # the wrapped text, joined again
    assert lines[0].startswith("suite smoke:")
    for backend in ("torch-cpu", "bug-top-left-causal"):
        assert any(line.startswith(f"{backend}  ") and "passed" in line for line in lines)
    assert "speed " in text and "than torch-cpu" in text
    assert "worst " in text and "(budget " in text
    missing = next(r for r in run.records if r["case"]["backend"] == "needs-missing-sdk")
    assert "not available here" in text and " ".join(missing["reason"].split(": ", 1)[1].split()) in text
    failed = [r for r in run.records if r["status"] == "failed"]
    assert failed and f"failing cases ({len(failed)})" in text
    for r in failed:
        assert " ".join(r["reason"].split()) in text  # every verdict whole, wrapped but not cut
    assert "harness report" in text


def test_list_piped_honours_columns_and_cuts_no_name(harness_cli, monkeypatch) -> None:
    """`harness list > file` is as wide as COLUMNS says (80 here): below 120 columns a text block per backend and
    workload, never a name cut to "cpu-refe…"; without COLUMNS a piped table is wide enough for whole rows."""
    monkeypatch.setenv("COLUMNS", "80")
    narrow = harness_cli("list")
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in narrow.output
    for name in ("cpu-reference", "ascend-sim", "attention.chunked_prefill"):
        assert any(line.startswith((f"{name} ", f"{name}  ")) for line in lines), name  # one block each, whole
    assert len(lines) < 250  # a block per backend and workload: a 7-column table folded to 515 lines at 80
    monkeypatch.delenv("COLUMNS")
    wide = harness_cli("list")
    assert wide.exit_code == 0 and max(len(line) for line in wide.output.splitlines()) > 80


def test_summary_reports_contention(harness_cli) -> None:
    from harness.results import SCHEMA_VERSION, Record
    from harness.summary import RunFacts, render

    record = {
        "case": {"workload": "w", "preset": "tiny", "shape": "s", "dtype": "float32", "inputs": "normal", "seed": 0,
                 "backend": "torch-cpu", "key": "w/tiny/s/float32/normal/seed0@torch-cpu"},
        "status": "passed", "reason": "", "parity": None,
        "timing": {"median_ns": 1e6, "noisy": True, "noise": "wall time 2.5x the process's CPU time (> 1.2x): "
                   "it waited for a core"},
    }  # fmt: skip
    record.update(schema_version=SCHEMA_VERSION, run_id="r", time_utc="t")
    text = render([Record.from_dict(record)], RunFacts("s", "out.jsonl", 1.0, threads=1), 80)
    assert "noisy timings: 1 case (1 waited for a core)" in " ".join(text.split())
    assert text.startswith("suite s: 1 case on 1 backend in 1 s") and "\n1 case (1 passed)" in text


def test_summary_counts_other_skip_reasons_in_good_english() -> None:
    from harness.summary import RunFacts, render

    two = [skipped_record("a", "no bfloat16"), skipped_record("b", "no bfloat16"), skipped_record("c", "no op 'moe'")]
    text = " ".join(render(two, RunFacts("s", "out.jsonl", 1.0, threads=1), 80).split())
    assert "skipped 2: no bfloat16 (and 1 other reason)" in text
    three = [*two, skipped_record("d", "no op 'mla'")]
    text = " ".join(render(three, RunFacts("s", "out.jsonl", 1.0, threads=1), 80).split())
    assert "skipped 2: no bfloat16 (and 2 other reasons)" in text


ORACLE_PASSES = "Check('the oracle passes', 'my-ref', 'passes', ('attention.decode',), ('float32',), shapes=('gqa',))"
TWO_RANK_CLAIM = "Check('a two-rank claim', 'my-ref', 'passes', ('attention.decode',), ('float32',), min_world=2)"


def _fault_plugin(tmp_path: Path, *checks: str) -> str:
    """A fault plugin file for `harness selftest --faults`: backend `my-ref` (the oracle) and these checks."""
    (tmp_path / "my_backends.py").write_text(
        "from typing import ClassVar\nfrom harness.backends.cpu_reference import CpuReference\n"
        "class MyRef(CpuReference):\n    name: ClassVar[str] = 'my-ref'\n"
    )
    path = tmp_path / "my_checks.py"
    body = "".join(f"    {c[:-1]}, inputs=('normal',)),\n" for c in checks)
    path.write_text(
        f"from harness.selftest import Check\nBACKENDS = {str(tmp_path / 'my_backends.py')!r}\nCHECKS = (\n{body})\n"
    )
    return str(path)


def test_selftest_counts_a_skipped_check_apart_from_those_that_hold(harness_cli, tmp_path: Path) -> None:
    """A check that could not run (here: it needs two ranks) showed nothing: '1 of 2 checks hold, 1 skipped'."""
    checks = _fault_plugin(tmp_path, ORACLE_PASSES, TWO_RANK_CLAIM)
    run = harness_cli("selftest", "--faults", checks, "--out", str(tmp_path / "s.jsonl"))
    assert run.exit_code == 0, run.output
    assert "1 of 2 checks hold, 1 skipped;" in " ".join(run.output.split())


def test_worst_case_share_of_its_budget_reads_as_a_multiple_past_the_budget() -> None:
    """Under its budget a share (`31% of it`); over it a multiple (`1.05e+07x it`), never `1054677400% of it`."""
    from harness.summary import budget_share

    assert budget_share(0.31) == "31% of it"
    assert budget_share(1.8) == "1.8x it"
    assert budget_share(10546774.0) == "1.05e+07x it"
    assert budget_share(float("inf")) == "over"


def test_a_run_whose_every_case_skipped_tested_nothing_and_exits_3(harness_cli) -> None:
    """`-b cuda` on a CPU machine (here: a backend whose SDK is missing) skips every case: that run tested nothing
    and must not pass; one judged case beside the skips is a normal run (exit 0)."""
    args = ("run", "-w", "attention.decode", "--preset", "tiny", "--dtype", "float32", "--parity-only")
    nothing = harness_cli(*args, "-b", "needs-missing-sdk", "--plugin", plugin("unavailable"))
    assert nothing.exit_code == 3, nothing.output
    assert {r["status"] for r in nothing.records} == {"skipped"}
    assert "nothing was tested: 4 cases planned, all skipped (exit 3)" in nothing.output
    as_json = harness_cli(*args, "-b", "needs-missing-sdk", "--plugin", plugin("unavailable"), "--summary-format",
                          "json")  # fmt: skip
    data = __import__("json").loads(as_json.result.stdout)
    assert as_json.exit_code == data["exit_code"] == 3 and data["notes"][0].startswith("nothing was tested")
    some = harness_cli(*args, "-b", "needs-missing-sdk,cpu-reference", "--plugin", plugin("unavailable"))
    assert some.exit_code == 0, some.output
    assert "nothing was tested" not in some.output


def test_the_paper_suite_runs_on_the_accelerator_backends_unless_told_otherwise() -> None:
    """`devices` = every registered backend whose device is not the host CPU (a plugin's `tpu` too): the paper
    suite's real shapes never land on the CPU backends (hours) by default; elsewhere `devices` names them."""
    from harness.backend import default_registry
    from harness.backends.torch_cpu import TorchCpu
    from harness.planning import Planner
    from harness.workload import WorkloadRegistry

    class Tpu(TorchCpu):
        name = "tpu-test"
        device = "tpu"

    registry = default_registry()
    registry.register(Tpu, "test")
    devices = registry.select(["devices"])
    assert "tpu-test" in devices and "cuda" in devices and "ascend" in devices
    assert not {"torch-cpu", "cpu-reference", "ascend-sim", "ort-cpu"} & set(devices)
    assert registry.select(["torch-cpu", "devices"])[0] == "torch-cpu"
    cases = Planner(registry, WorkloadRegistry.discover()).plan(BUILTIN_SUITES["paper"])
    assert cases and {c.backend for c in cases} <= set(devices)


def test_a_paper_run_on_a_machine_without_an_accelerator_says_to_choose_backends(harness_cli) -> None:
    """Here every `devices` backend is unavailable (a plugin's whose SDK is missing stands for them on a GPU box)."""
    run = harness_cli(
        "run", "-w", "attention.decode", "--preset", "tiny", "-b", "needs-missing-sdk", "--plugin",
        plugin("unavailable"), "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 3
    assert "choose backends that run here with -b" in run.output


def test_a_selftest_whose_every_check_skipped_checked_nothing_and_exits_3(harness_cli, tmp_path: Path) -> None:
    """The CUDA block on a machine whose cuda is not available (here: checks that need two ranks, run alone)."""
    checks = _fault_plugin(tmp_path, TWO_RANK_CLAIM)
    run = harness_cli("selftest", "--faults", checks, "--out", str(tmp_path / "s.jsonl"))
    assert run.exit_code == 3, run.output
    assert "nothing was checked: every check skipped" in run.output
    (tmp_path / "afile").write_text("")
    unwritable = harness_cli("selftest", "--faults", checks, "--out", str(tmp_path / "afile/s"))
    assert unwritable.exit_code == 2 and "--out" in unwritable.output and "cannot write there" in unwritable.output
