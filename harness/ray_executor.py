"""`harness run --executor ray`: a sweep fanned out over a Ray cluster. Ray schedules; this module only says what
each task needs and writes home what it returns.

Each case group (cases sharing inputs) splits by the Ray resources its backends declare (Backend.ray_resources:
`num_gpus=1`, or a custom resource such as `{"resources": {"NPU": 1}}` that nodes declare with `ray start
--resources`), and each part becomes one Ray task asking for them, CPUs (the run's thread count) when none. The task
(harness/ray_task.py) runs the ordinary executor on its node and yields each record as the case ends; the driver
writes it to the one JSONL as it arrives (ray.wait), so a killed driver loses only cases in flight and
`--resume` runs the rest. A task whose worker or node dies leaves a `crashed` record, with Ray's reason, for the
case in flight; its remaining cases go to a new task. `--ray-retries N` first resubmits a dead task's unfinished
cases N times, for node losses that are not the case's fault. Ray is imported only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backend import BackendRegistry
from harness.isolate import IsolationSpec
from harness.lazy import torch
from harness.names import BadInputError
from harness.results import Record
from harness.run_options import RayConfig, RunOptions
from harness.runner import Runner, RunSummary
from harness.workload import Case, WorkloadRegistry

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # a head that takes no TCP connection in this long is not there
INSTALL_HINT = "pip install 'infer-parity-harness[ray]'"


class RayMissingError(BadInputError):
    """--executor ray where Ray is not installed (exit 2)."""


def ray_installed() -> bool:
    """Whether `import ray` works here (imported only when a run asks for --executor ray)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray() -> None:
    if not ray_installed():
        raise RayMissingError(f"--executor ray: Ray is not installed here; {INSTALL_HINT}")


@dataclass(frozen=True)
class Need:
    """What one task asks Ray for: the `.options(...)` resources, and `kind`, the backend's declared resources as
    text ("cpu" for host CPU work): a case group splits into one task per kind."""

    kind: str
    resources: Mapping[str, Any]

    def accelerators(self) -> list[str]:
        """The cluster resources this task needs beyond CPUs, as Ray names them: GPU for num_gpus, custom ones as
        given."""
        named = ["GPU"] if self.resources.get("num_gpus") else []
        return named + [k for k, v in (self.resources.get("resources") or {}).items() if v]

    def missing(self, cluster: Mapping[str, float]) -> str | None:
        """Why no node of the cluster can run this task now (None: some can): each resource it lacks, named."""
        lacking = [name for name in self.accelerators() if not cluster.get(name)]
        if not lacking:
            return None
        custom = [name for name in lacking if name != "GPU"]  # Ray finds GPUs itself; custom resources are declared
        hint = ", ".join(f"""`ray start --resources '{{"{name}": N}}'`""" for name in custom)
        hint = f" (start its nodes with {hint})" if hint else ""
        which = "the " + " and ".join(lacking) + (" resources" if len(lacking) > 1 else " resource")
        return f"no node of the Ray cluster has {which} this backend needs{hint}"


def need_of(ray_resources: Mapping[str, Any], cpus: int) -> Need:
    """The Ray resources of a task running a backend whose class declares `ray_resources` (BackendTraits): one CPU
    beside them, or, with none declared (host CPU work), `cpus` CPUs."""
    if not ray_resources:
        return Need("cpu", {"num_cpus": cpus})
    return Need(json.dumps(ray_resources, sort_keys=True, default=str), {"num_cpus": 1, **ray_resources})


@dataclass
class GroupTask:
    """Cases of one input group that run on one device kind; `cases` shrinks as their records arrive."""

    need: Need
    cases: list[Case]
    retries_left: int
    node: dict[str, Any] = field(default_factory=dict)  # where it ran, once a record said so


def split_groups(cases: Iterable[Case], need: Callable[[Case], Need], retries: int) -> list[GroupTask]:
    """Cases in plan order -> one task per (input group, device kind), cases in order within each."""
    tasks: dict[tuple[str, str], GroupTask] = {}
    for case in cases:
        found = need(case)
        task = tasks.setdefault((case.input_key, found.kind), GroupTask(found, [], retries))
        task.cases.append(case)
    return list(tasks.values())


class RayRunner(Runner):
    """The runner's loop with each group sent to a Ray task instead of the executor of this process (which
    only builds the records of cases whose task never reported: a dead worker, a node without the device)."""

    def __init__(
        self,
        backends: BackendRegistry,
        workloads: WorkloadRegistry,
        options: RunOptions,
        run_id: str,
        spec: IsolationSpec,
        config: RayConfig,
        isolate: bool,
        user_inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(backends, workloads, options, run_id, user_inputs=user_inputs)
        self.spec, self.config, self.isolate = spec, config, isolate
        self._unavailable: dict[str, str] = {}

    def unavailable(self) -> dict[str, str]:
        """The backends the nodes found unavailable (the last word per backend), with the reason."""
        return dict(self._unavailable)

    def note_unavailable(self, found: Mapping[str, str]) -> None:
        self._unavailable.update(found)

    def run(
        self,
        cases: Iterable[Case],
        writer: Any,
        on_record: Callable[[Case, Record], None] | None = None,
        on_start: Callable[[Case], None] | None = None,
    ) -> RunSummary:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            _connect(ray, self.config.address)
        summary = RunSummary()

        def emit(case: Case, record: Record) -> None:
            if on_start is not None:
                on_start(case)  # progress and the supervisor's "case in flight" (cases run in parallel)
            writer.write(record)
            summary.add(record.status)
            if on_record is not None:
                on_record(case, record)

        try:
            _Sweep(ray, self, emit).run(list(cases))
        finally:
            if started_here:
                ray.shutdown()
        return summary

    def spec_text(self) -> str:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="harness-ray-") as tmp:
            path = Path(tmp) / "spec.json"
            self.spec.write(self.options, path)
            return path.read_text()

    def need(self, case: Case) -> Need:
        """What the task running the case asks for, as its backend class declares (never instantiated here)."""
        try:
            resources = self.planner.backends.get(case.backend).ray_resources
        except Exception:  # a backend class that cannot load here runs as CPU work (its record says why)
            resources = {}
        return need_of(resources, self.options.threads or 1)

    def driver_record(self, case: Case, status: str, reason: str, node: Mapping[str, Any]) -> Record:
        """A record for a case whose task did not report it, made here: the environment names the Ray node
        where known, and no host (this process's host did not run it)."""
        return self.in_process.record(case, None, status=status, reason=reason, environment={"ray": dict(node)})


def _connect(ray: Any, address: str | None) -> None:
    """ray.init, quiet: an existing cluster (`address`, or RAY_ADDRESS, or one `ray start` began on this machine),
    else a local instance with this machine's cores."""
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = os.cpu_count() or 1
    _check_reachable(address)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise BadInputError(f"--ray-address {address}: cannot connect: {exc}") from None


def _check_reachable(address: str | None) -> None:
    """A GCS address (HOST:PORT, given or in RAY_ADDRESS) that takes no connection is refused at once: ray.init
    would retry it for ever, printing C++ warnings, and the run would hang with nothing recorded."""
    named, source = (address, "--ray-address") if address else (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
    if not named or "://" in named or named in ("auto", "local"):
        return  # ray:// (Ray Client), auto and local are resolved by Ray itself
    host, sep, port = named.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise BadInputError(
            f"{source} {named!r}: expected HOST:PORT of a Ray head (e.g. head-node:6379), auto or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise BadInputError(
            f"{source} {named}: no Ray head answers there ({exc.strerror or exc}); start one with "
            f"`ray start --head --port {port}` or give the address `ray start --head` printed"
        ) from None


class _Sweep:
    """One run's tasks in flight: submit them all, then take records as any task yields one."""

    def __init__(self, ray: Any, runner: RayRunner, emit: Callable[[Case, Record], None]) -> None:
        self.ray, self.runner, self.emit = ray, runner, emit
        self.remote = ray.remote(_run_group_entry())
        self.spec = ray.put(runner.spec_text())
        inputs = runner.spec.inputs_file
        self.inputs = ray.put(Path(inputs).read_bytes()) if inputs else None
        self.pending: dict[Any, GroupTask] = {}
        self.emitted: set[str] = set()  # the keys of the records taken from tasks: each written once
        self.cluster = ray.cluster_resources()
        self.cpus = max([n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")] or [1])

    def submit(self, task: GroupTask) -> None:
        resources = dict(task.need.resources)
        if "num_cpus" in resources:  # never more CPUs than the largest node has: the task would never start
            resources["num_cpus"] = max(1, min(int(resources["num_cpus"]), int(self.cpus)))
        keys = [c.key for c in task.cases]
        # Backpressure 1: the task starts its next case only once this driver has taken the last record, so a
        # worker that dies loses the case in flight only, never a finished record still on its way here.
        options = self.remote.options(
            num_returns="streaming", _generator_backpressure_num_objects=1, max_retries=0, **resources
        )
        self.pending[options.remote(self.spec, self.inputs, keys, self.runner.isolate)] = task

    def run(self, cases: list[Case]) -> None:
        for task in split_groups(cases, self.runner.need, self.runner.config.retries):
            why = task.need.missing(self.cluster)
            if why is not None:
                for case in task.cases:
                    self.emit(case, self.runner.driver_record(case, "skipped", f"{case.backend}: {why}", {}))
                continue
            self.submit(task)
        try:
            while self.pending:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1)
                for gen in ready:
                    self.take(gen)
        except BaseException:  # Ctrl-C or a write that failed: stop the tasks still running
            for gen in self.pending:
                with contextlib.suppress(Exception):  # best effort: the driver's exit ends its tasks anyway
                    self.ray.cancel(gen, force=True)
            raise

    def take(self, gen: Any) -> None:
        """The next item of a ready task: a record, its backends' availability, its end, or its death."""
        task = self.pending[gen]
        try:
            kind, value = self.ray.get(next(gen))
        except StopIteration:
            del self.pending[gen]
            for case in task.cases:  # the node's plan lacked them: plugins or --model differ there
                reason = "the Ray node's plan has no such case (is every --plugin file and --model path on the node?)"
                self.emit(case, self.runner.driver_record(case, "error", reason, task.node))
            return
        except self.ray.exceptions.RayError as exc:
            del self.pending[gen]
            self.died(task, exc)
            return
        if kind == "unavailable":
            self.runner.note_unavailable(value)
            return
        record = Record.from_dict(value, "a Ray task's record")
        task.node = dict((record.environment or {}).get("ray") or {})
        case = claim(task, record.case.key, self.emitted)
        if case is not None:
            self.emit(case, record)

    def died(self, task: GroupTask, exc: Exception) -> None:
        """A task that raised (its code) or died (worker, node): error or crashed records, or a retry."""
        reason = _ray_reason(exc)
        if isinstance(exc, self.ray.exceptions.RayTaskError):  # Python code raised outside any case
            for case in task.cases:
                self.emit(case, self.runner.driver_record(case, "error", reason, task.node))
            return
        if task.retries_left > 0:
            log.warning("a Ray task died (%s); retrying its %d unfinished cases", reason, len(task.cases))
            self.submit(GroupTask(task.need, task.cases, task.retries_left - 1))
            return
        in_flight, rest = task.cases[0], task.cases[1:]
        self.emit(in_flight, self.runner.driver_record(in_flight, "crashed", reason, task.node))
        if rest:  # the others never ran: a new task, as --isolate goes on after a crashed case
            self.submit(GroupTask(task.need, rest, self.runner.config.retries))


class RayTaskRecordError(RuntimeError):
    """A Ray task sent a record for a case it was never given (a node running another plan)."""


def claim(task: GroupTask, key: str, emitted: set[str]) -> Case | None:
    """The case of `task` a record with `key` reports, taken off the task's pending cases and added to `emitted`;
    None for a duplicate (a key already taken: logged, never written twice). A key the task was not given raises
    RayTaskRecordError naming it."""
    case = next((c for c in task.cases if c.key == key), None)
    if case is None:
        if key in emitted:
            log.warning("a Ray task sent a second record for %s; the first one stands", key)
            return None
        given = ", ".join(c.key for c in task.cases[:3]) or "none left"
        raise RayTaskRecordError(f"a Ray task sent a record for {key}, a case it was not given (its cases: {given})")
    task.cases.remove(case)
    emitted.add(key)
    return case


def _ray_reason(exc: Exception) -> str:
    """Ray's words on a task that failed, in one line of reasonable length."""
    text = " ".join(str(exc).split())
    return f"the Ray task running the case failed: {type(exc).__name__}: {text[:600]}"


def _run_group_entry() -> Callable[..., Any]:
    from harness.ray_task import run_group

    return run_group
