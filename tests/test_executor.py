"""One case's execution: typed records that round-trip (and read version-1 lines), Skip reasons in records,
inputs moved to the device once per case, and --isolate as an executor of the same interface."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

from harness.backend import BackendRegistry
from harness.backends.torch_cpu import TorchCpu
from harness.executor import CaseExecutor
from harness.isolate import IsolatedExecutor, IsolationSpec, _read_spec
from harness.lazy import torch
from harness.planning import Planner
from harness.results import SCHEMA_VERSION, Record, ResultWriter, read_records
from harness.run_options import RunOptions, Skip
from harness.runner import Runner
from harness.suites import Suite
from harness.timing import TimingConfig
from harness.workload import WorkloadRegistry

ATTENTION = Suite("t", workloads=("attention.prefill",), dtypes=("float32",), backends=(), inputs=("normal",))
FAST = TimingConfig(budget_s=0.02, warmup_s=0.0, min_samples=3, max_samples=5, min_sample_s=0.0)

PLUGIN = Path(__file__).parent / "plugins" / "with_options.py"  # optioned-cpu: its `bias` shifts attention


class CountingTorchCpu(TorchCpu):
    """torch-cpu that counts the tensors it is handed for its device."""

    name: ClassVar[str] = "counting-torch-cpu"
    moved: ClassVar[list[tuple[int, ...]]] = []

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        CountingTorchCpu.moved.append(tuple(t.shape))
        return super().to_device(t)


def _registry(*classes: type) -> BackendRegistry:
    registry = BackendRegistry()
    registry.load_entry_points()
    for cls in classes:
        registry.register(cls, "tests")
    return registry


def _suite(*backends: str, **kw: Any) -> Suite:
    return dataclasses.replace(ATTENTION, backends=backends, **kw)


def test_records_round_trip_and_version_1_lines_are_read(tmp_path: Path) -> None:
    runner = Runner(_registry(), WorkloadRegistry.discover(), RunOptions(timing=FAST), "rt")
    out = tmp_path / "r.jsonl"
    with ResultWriter(out) as writer:
        runner.run(runner.plan(_suite("torch-cpu", shapes=("gqa",))), writer)
    line = json.loads(out.read_text().splitlines()[0])
    [record] = read_records(out)
    assert record.schema_version == SCHEMA_VERSION == 2 and line["backend_options"] == {}
    assert record.to_dict() == line  # the typed record writes back exactly the line it was read from
    assert record.status == "passed" and record.parity is not None and record.parity.metrics is not None
    assert record.parity.budget is not None and record.timing is not None and record.timing.median_ns > 0
    assert record.case.key == line["case"]["key"] and record.case.input_key == line["case"]["key"].split("@")[0]
    old = {k: v for k, v in line.items() if k != "backend_options"} | {"schema_version": 1}
    (tmp_path / "v1.jsonl").write_text(json.dumps(old) + "\n")
    [read_v1] = read_records(tmp_path / "v1.jsonl")
    assert read_v1.schema_version == 1 and read_v1.backend_options == {}
    assert read_v1.parity == record.parity and read_v1.case == record.case


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return [_without_nulls(v) for v in value] if isinstance(value, list) else value


def test_a_committed_version_1_file_reads_and_writes_back_unchanged() -> None:
    """results/cuda/ci.jsonl was written by schema 1 on an H100: every line reads, and writes back as it was
    (plus the version-2 field), so report and compare keep working on files users already have."""
    path = Path(__file__).resolve().parents[1] / "results" / "cuda" / "ci.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    records = read_records(path)
    assert len(records) == len(lines) > 1000 and {r.schema_version for r in records} == {1}
    for record, line in zip(records, lines, strict=True):
        written = record.to_dict()
        assert written.pop("backend_options") == {}
        assert _without_nulls(written) == _without_nulls(line)  # fields newer than the file are written as null


def test_skip_reasons_reach_the_record() -> None:
    planner = Planner(_registry(), WorkloadRegistry.discover())
    [case] = planner.plan(_suite("torch-cpu", shapes=("gqa",)))
    executor = CaseExecutor(planner.backends, planner, RunOptions(parity_only=True), "skip")
    given = executor.execute(case, Skip("no saved inputs for this group"))
    assert (given.status, given.reason) == ("skipped", "no saved inputs for this group")
    planner.backends.load_plugin(str(Path(__file__).parent / "plugins" / "unavailable.py"))
    [case] = planner.plan(_suite("needs-missing-sdk", shapes=("gqa",)))
    unavailable = executor.execute(case, executor.prepare(case))
    assert unavailable.status == "skipped"
    assert unavailable.reason.startswith("backend needs-missing-sdk unavailable: vendor SDK not importable")


def test_inputs_move_to_the_device_once_per_case() -> None:
    registry = _registry(CountingTorchCpu)
    runner = Runner(registry, WorkloadRegistry.discover(), RunOptions(timing=FAST), "once")
    cases = runner.plan(_suite("counting-torch-cpu", shapes=("gqa",), inputs=("normal", "stress")))
    records: list[Record] = []
    CountingTorchCpu.moved.clear()
    runner.run(cases, _Sink(), lambda case, record: records.append(record))
    assert [r.status for r in records] == ["passed", "passed"]
    assert records[0].timing is not None and records[0].parity.deterministic is True  # judged, timed, re-run
    inputs = runner.in_process.prepare(cases[0])
    assert isinstance(inputs, Skip) is False
    per_case = sorted(tuple(t.shape) for t in inputs.tensors.values())
    # once per case, plus the two checked input sets of the one timed case (the stress case is not timed)
    assert sorted(CountingTorchCpu.moved) == sorted(per_case * (len(cases) + 2))


class _Sink:
    def write(self, record: Record) -> None:
        pass


def test_isolate_runs_cases_through_the_executor_interface(tmp_path: Path) -> None:
    registry = _registry()
    registry.load_plugin(str(PLUGIN))
    suite = _suite("optioned-cpu", shapes=("gqa",))
    options = RunOptions(parity_only=True, backend_options={"optioned-cpu": {"bias": "0.5"}})
    spec = IsolationSpec(suite, (str(PLUGIN),), None, "iso", 120.0)
    spec_file = tmp_path / "spec.json"
    spec.write(options, spec_file)
    assert _read_spec(spec_file)[1] == options  # the children get the backend options too
    runner = Runner(registry, WorkloadRegistry.discover(), options, "iso", isolation=(spec_file, 120.0))
    assert isinstance(runner.executor, IsolatedExecutor)
    [case] = runner.plan(suite)
    record = runner.executor.execute(case, runner.executor.prepare(case))
    # The child built the backend with bias 0.5 (its attention is off by 0.5): judged there, failed, recorded.
    assert record.status == "failed", record.reason
    assert record.backend_options == {"bias": "0.5"}
    assert record.environment["backend"]["bias"] == 0.5


def test_isolate_imports_the_executor_not_the_runner() -> None:
    source = Path(__file__).resolve().parents[1] / "harness" / "isolate.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.ImportFrom)}
    assert "harness.executor" in imported and "harness.runner" not in imported


def test_a_group_no_backend_can_run_makes_no_inputs(harness_cli, monkeypatch) -> None:
    """`--suite paper` on a CPU machine: real shapes' inputs are gigabytes; where every backend of a group is
    unavailable (or refuses the case) none are made, and each record says why it was skipped."""
    from harness.models.attention import AttentionWorkload

    def no_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inputs were made for a group that no backend can run")

    monkeypatch.setattr(AttentionWorkload, "make_inputs", no_inputs)
    unavailable = str(Path(__file__).parent / "plugins" / "unavailable.py")  # as cuda on a CPU machine
    run = harness_cli(
        "run", "-w", "attention.prefill", "--preset", "tiny", "-b", "needs-missing-sdk", "--plugin", unavailable,
        "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 3, run.output  # every case skipped: the run tested nothing
    assert run.records and {r["status"] for r in run.records} == {"skipped"}
    assert all("backend needs-missing-sdk unavailable" in r["reason"] for r in run.records)
