"""--executor ray on a local Ray instance (2 CPUs, one per module): the same cases and verdicts as a local run,
a worker killed mid-group costs the case in flight only, and a driver killed mid-run resumes without duplicates.

Skipped where Ray is not installed (`pip install 'infer-parity-harness[ray]'`); the exit-2 checks of the options
run everywhere."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from harness.launch import launch
from harness.results import read_records
from harness.run_flags import RunFlags

pytestmark = pytest.mark.slow

TINY = {
    "workloads": ("attention.prefill", "moe.layer"),
    "presets": ("tiny",),
    "dtypes": ("float32",),
    "distributions": ("normal",),
    "parity_only": True,
}

KILLING = """
import os, signal
from pathlib import Path
from typing import ClassVar
from harness.backends.torch_cpu import TorchCpu

MARK = Path(__file__).with_name("killed-once")

class Killing(TorchCpu):
    name: ClassVar[str] = "killing-cpu"

    def attention(self, q, k, v, **kw):
        if k.shape[1] == 1:  # the MQA shape: one case of the group
            os.kill(os.getpid(), signal.SIGKILL)  # the Ray worker dies as a segfault or the OOM killer leaves it
        return super().attention(q, k, v, **kw)

class KillingOnce(TorchCpu):
    name: ClassVar[str] = "killing-once-cpu"

    def attention(self, q, k, v, **kw):
        if k.shape[1] == 1 and not MARK.exists():  # a node lost once: not the case's fault
            MARK.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().attention(q, k, v, **kw)


class Dying(TorchCpu):
    name: ClassVar[str] = "dying-cpu"

    def attention(self, q, k, v, **kw):
        os.kill(os.getpid(), signal.SIGKILL)  # every case: dies just after the case before it yielded its record


class TpuX(TorchCpu):  # a device the core has never heard of, on nodes started with --resources '{"TPU_X": 4}'
    name: ClassVar[str] = "tpu-x"
    device: ClassVar[str] = "tpu"
    ray_resources: ClassVar[dict] = {"resources": {"TPU_X": 1}}


class Slow(TorchCpu):
    name: ClassVar[str] = "slow-cpu"

    def attention(self, q, k, v, **kw):
        import time
        time.sleep(0.4)
        return super().attention(q, k, v, **kw)
"""


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray instance for the module (2 CPUs, quiet); its GCS address for subprocess drivers."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'infer-parity-harness[ray]'")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def plugin(tmp_path: Path) -> str:
    path = tmp_path / "killing.py"
    path.write_text(KILLING)
    return str(path)


def _run(out: Path, **flags: Any) -> int:
    request = RunFlags(out=out, **flags).request()
    return launch(request, Console(stderr=True, quiet=True)).exit_code


def _verdicts(path: Path) -> dict[str, tuple[str, Any]]:
    """Key -> (status, parity metrics): what a run decided about each case."""
    out = {}
    for r in read_records(path):
        metrics = None if r.parity is None or r.parity.metrics is None else r.parity.metrics.rel_l2
        out[r.case.key] = (r.status, metrics)
    return out


def test_ray_gives_the_local_runs_cases_and_verdicts(ray_cluster: str, tmp_path: Path) -> None:
    backends = ("cpu-reference,torch-cpu",)
    assert _run(tmp_path / "local.jsonl", backends=backends, **TINY) == 0
    assert _run(tmp_path / "ray.jsonl", backends=backends, executor="ray", **TINY) == 0
    local, fanned = _verdicts(tmp_path / "local.jsonl"), _verdicts(tmp_path / "ray.jsonl")
    assert len(local) >= 8 and fanned == local
    for record in read_records(tmp_path / "ray.jsonl"):  # where each case ran, from the node itself
        env = record.environment or {}
        assert env["host"] and env["backend"] and env["ray"]["node_id"]


def test_a_killed_worker_costs_the_case_in_flight_only(ray_cluster: str, tmp_path: Path, plugin: str) -> None:
    out = tmp_path / "r.jsonl"
    flags = {**TINY, "workloads": ("attention.prefill",)}
    code = _run(out, backends=("killing-cpu,torch-cpu",), executor="ray", plugins=(plugin,), **flags)
    assert code == 3
    records = read_records(out)
    statuses = {r.case.key: r.status for r in records}
    assert len(statuses) == len(records) == 4  # every case once: 2 shapes x 2 backends
    [crashed] = [r for r in records if r.status == "crashed"]
    assert crashed.case.backend == "killing-cpu" and crashed.case.shape == "mqa"
    assert "WorkerCrashedError" in crashed.reason or "died" in crashed.reason, crashed.reason
    assert sorted(statuses.values()) == ["crashed"] + ["passed"] * 3  # the rest of its group ran on
    assert statuses[crashed.case.key.replace("@killing-cpu", "@torch-cpu")] == "passed"


def test_a_record_yielded_just_before_the_worker_dies_is_kept(ray_cluster: str, tmp_path: Path, plugin: str) -> None:
    """The task waits for the driver to take each record before its next case: a worker killed right after a
    healthy case finished must not turn that case into `crashed` (its record was in flight to the driver)."""
    out = tmp_path / "r.jsonl"
    flags = {**TINY, "workloads": ("attention.prefill",), "seeds": "0,1,2"}  # 6 groups, each torch-cpu then dying
    assert _run(out, backends=("torch-cpu,dying-cpu",), executor="ray", plugins=(plugin,), **flags) == 3
    statuses = {(r.case.shape, r.case.seed, r.case.backend): r.status for r in read_records(out)}
    assert len(statuses) == 12
    assert {k: s for k, s in statuses.items() if k[2] == "torch-cpu"} == {
        k: "passed" for k in statuses if k[2] == "torch-cpu"
    }
    assert {s for k, s in statuses.items() if k[2] == "dying-cpu"} == {"crashed"}


def test_ray_retries_resubmit_a_dead_tasks_unfinished_cases(ray_cluster: str, tmp_path: Path, plugin: str) -> None:
    flags = {**TINY, "workloads": ("attention.prefill",), "shapes": ("mqa",), "plugins": (plugin,)}
    out = tmp_path / "r.jsonl"
    assert _run(out, backends=("killing-once-cpu",), executor="ray", ray_retries=1, **flags) == 0
    assert (tmp_path / "killed-once").exists()  # it did die once; the retry ran the case
    assert [r.status for r in read_records(out)] == ["passed"]


def test_a_killed_driver_resumes_without_duplicates(ray_cluster: str, tmp_path: Path, plugin: str) -> None:
    out = tmp_path / "r.jsonl"
    select = ["-w", "attention.prefill,attention.decode", "--preset", "tiny", "--parity-only", "--plugin", plugin]
    cmd = [sys.executable, "-m", "harness", "run", *select, "-b", "slow-cpu", "--executor", "ray"]
    cmd += ["--ray-address", ray_cluster, "--no-table"]
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = [json.loads(line)["case"]["key"] for line in out.read_text().splitlines()]
    assert len(written) >= 4
    flags = {"workloads": ("attention.prefill,attention.decode",), "presets": ("tiny",), "parity_only": True}
    code = _run(out, resume=out, backends=("slow-cpu",), executor="ray", plugins=(plugin,), **flags)
    assert code == 0
    keys = [r.case.key for r in read_records(out)]
    assert len(keys) == len(set(keys)) > len(written)  # nothing twice, the rest added
    assert keys[: len(written)] == written  # what the killed driver wrote is kept as it was


def test_a_resource_no_node_has_is_a_skip_naming_it(ray_cluster: str, tmp_path: Path, plugin: str) -> None:
    out = tmp_path / "r.jsonl"
    flags = {**TINY, "workloads": ("attention.prefill",)}
    code = _run(out, backends=("tpu-x,torch-cpu",), executor="ray", plugins=(plugin,), **flags)
    records = read_records(out)
    assert {r.case.backend: r.status for r in records} == {"tpu-x": "skipped", "torch-cpu": "passed"}
    for r in records:
        if r.case.backend == "tpu-x":  # the 2-CPU cluster has no TPU_X: said, with how nodes declare it
            assert "tpu-x: no node of the Ray cluster has the TPU_X resource" in r.reason, r.reason
            assert """ray start --resources '{"TPU_X": N}'""" in r.reason
    assert len(records) == 4 and code == 0


def test_ray_options_without_executor_ray_exit_2(harness_cli) -> None:
    for extra in (("--ray-address", "127.0.0.1:6379"), ("--ray-retries", "1")):
        run = harness_cli("run", "-w", "attention.prefill", "--preset", "tiny", *extra)
        assert run.exit_code == 2 and "goes with --executor ray" in run.output and not run.records


def test_a_dead_ray_address_exits_2_at_once_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "r.jsonl"
    select = ["-m", "harness", "run", "-w", "attention.prefill", "--preset", "tiny", "--executor", "ray"]
    for extra, env in ((["--ray-address", dead], {}), ([], {"RAY_ADDRESS": dead}), (["--ray-address", "head"], {})):
        # ray.init alone retries a dead address for ever: the timeout fails the test instead of hanging it
        done = subprocess.run(
            [sys.executable, *select, *extra, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
            check=False,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and not (out.exists() and out.read_text()), done.stderr
        assert len(lines) == 1 and (dead in lines[0] or "'head'" in lines[0]), lines


def test_executor_ray_without_ray_exits_2_naming_the_extra(tmp_path: Path) -> None:
    hide_ray = "import sys; sys.modules['ray'] = None; from harness.cli import main; main(sys.argv[1:])"
    args = ["run", "-w", "attention.prefill", "--preset", "tiny", "--executor", "ray", "--out", str(tmp_path / "r")]
    done = subprocess.run([sys.executable, "-c", hide_ray, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --executor ray: Ray is not installed here; pip install 'infer-parity-harness[ray]'"
    ]


def test_report_groups_by_the_host_each_case_ran_on(harness_cli, tmp_path: Path) -> None:
    select = ("-w", "attention.prefill", "--preset", "tiny", "--dtype", "float32", "--distribution", "normal")
    run = harness_cli("run", *select, "-b", "torch-cpu", "--parity-only")
    assert run.exit_code == 0 and len(run.records) == 2
    first, second = run.records
    second["environment"]["host"] = "npu-node-7"  # as a second node of a cluster would have recorded it
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in (first, second)))
    md = harness_cli("report", str(mixed), "--group-by", "host")
    assert md.exit_code == 0
    here = first["environment"]["host"]
    sections = md.output.split("## host ")[1:]
    assert sorted(s.splitlines()[0] for s in sections) == sorted([f"{here} (1 records)", "npu-node-7 (1 records)"])
    assert all(s.count("attention.prefill") == 1 for s in sections)  # each case under its own host only
    table = harness_cli("report", str(mixed), "--group-by", "host", "--format", "csv").output.splitlines()
    assert table[0].startswith("host,workload,")
    assert sorted(line.split(",")[0] + "/" + line.split(",")[3] for line in table[1:]) == sorted(
        [f"{here}/{first['case']['shape']}", f"npu-node-7/{second['case']['shape']}"]
    )
    assert harness_cli("report", str(mixed), "--group-by", "host", "--format", "latex").exit_code == 2


def test_no_module_imports_ray_until_a_run_asks() -> None:
    code = (
        "import sys, harness.cli, harness.cli_run, harness.launch, harness.run_flags, harness.ray_executor, "
        "harness.ray_task; print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
