"""The runner: expands a suite into cases, feeds every backend the same inputs, judges and times, streams records.

Cases that share inputs (everything but the backend) form a group: inputs are generated (or loaded) once and
the float64 reference is computed once per group, so adding a backend costs only that backend's own work.
A backend that raises becomes an `error` record and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from harness import parity
from harness.backend import DTYPES, Availability, Backend, BackendRegistry, RegistryError, UnsupportedCaseError
from harness.case_timing import CaseTimer
from harness.lazy import torch
from harness.names import BadInputError
from harness.results import SCHEMA_VERSION, host_environment, utc_now
from harness.saved import SavedOutputs, SavedOutputsError
from harness.suites import Suite
from harness.timing import TimingConfig
from harness.workload import (
    USER_SHAPE,
    Case,
    CaseInputs,
    Workload,
    WorkloadError,
    WorkloadRegistry,
    WorkloadUnavailableError,
    map_tensors,
)

log = logging.getLogger(__name__)

USER_INPUTS = "user"  # the `inputs` field of cases run on the user's own tensors


class UsageError(BadInputError):
    """A selection that cannot run: unknown names, empty selection, inputs that do not fit (exit code 2)."""


@dataclass(frozen=True)
class RunOptions:
    parity_only: bool = False
    timing: TimingConfig = field(default_factory=TimingConfig)
    determinism: bool = True  # run each op twice more and record whether the outputs are bitwise equal
    threads: int | None = None  # intra-op threads for torch and every backend's pools; None leaves them as they are
    time_oracles: bool = False  # also time reference backends (cpu-reference): the cost of the naive math
    save_outputs: Path | None = None
    against: str | None = None  # a backend name, or a directory written by --save-outputs
    against_ratio: float = parity.DEFAULT_RATIO  # --against: allowed multiple of the baseline's error
    budget_overrides: Mapping[str, float] | None = None
    layerwise: bool = False  # LLM workloads: per-layer localization (propagated and teacher-forced)
    model_path: str | None = None  # LLM workloads: a user's checkpoint directory instead of seeded weights
    backend_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # backend -> option -> raw value


@dataclass
class RunSummary:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    @property
    def exit_code(self) -> int:
        """DESIGN.md: 0 all passed, 1 a parity failure, 3 cases errored or crashed."""
        if any(self.counts.get(s) for s in ("error", "crashed", "timeout")):
            return 3
        if self.counts.get("failed"):
            return 1
        return 0


def _nonfinite_problem(inputs: Mapping[str, Any]) -> str | None:
    bad = []
    for name, t in inputs.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if nan or inf:
                bad.append(f"{name} has {nan} NaN and {inf} Inf values")
    return "non-finite inputs: " + "; ".join(bad) + " (parity needs finite inputs)" if bad else None


class Runner:
    def __init__(
        self,
        backends: BackendRegistry,
        workloads: WorkloadRegistry,
        options: RunOptions,
        run_id: str,
        user_inputs: Mapping[str, torch.Tensor] | None = None,
        isolation: tuple[Path, float] | None = None,
    ) -> None:
        self.backends = backends
        self.workloads = workloads
        self.options = options
        self.run_id = run_id
        self.user_inputs = dict(user_inputs) if user_inputs is not None else None
        self.isolation = isolation  # (spec file, per-case timeout): run each case in a child process
        self.shape_filter: tuple[str, ...] = ()
        self.excluded = 0  # cases the suite's exclude globs left out of the last plan
        self._checkpoint_shapes: dict[tuple[str, str, str], Any] = {}
        self._instances: dict[str, Backend] = {}
        self._availability: dict[str, Availability] = {}
        self._environments: dict[str, dict[str, Any]] = {}
        self._timer = CaseTimer(options.timing)
        self.saved_in = self._against_dir()
        self.saved_out = SavedOutputs(options.save_outputs) if options.save_outputs else None

    # ----- planning -----
    def _against_dir(self) -> SavedOutputs | None:
        target = self.options.against
        if target is None:
            return None
        if Path(target).is_dir():
            saved = SavedOutputs(Path(target))
            try:
                saved.baseline_backend()
            except SavedOutputsError as exc:
                raise UsageError(str(exc)) from None
            return saved
        try:
            self.backends.get(target)
        except RegistryError:
            raise UsageError(
                f"--against {target!r} is neither a directory written by --save-outputs nor a backend "
                f"(known backends: {', '.join(self.backends.names())})"
            ) from None
        return None

    def plan(self, suite: Suite) -> list[Case]:
        """Cases in input-group order (the backend varies fastest). Raises UsageError on a bad selection."""
        try:
            workloads = self.workloads.select(suite.workloads)
            backends = self.backends.select(suite.backends)
        except (WorkloadError, RegistryError) as exc:
            raise UsageError(str(exc)) from None
        for dtype in suite.dtypes:
            if dtype not in DTYPES:
                raise UsageError(f"unknown dtype {dtype!r}: not one of: {', '.join(DTYPES)}")
        self.shape_filter = suite.shapes
        if self.options.model_path is not None:
            workloads = self._checkpoint_workloads(workloads, suite.presets)
        cases = []
        known_shapes: set[str] = set()
        for w in workloads:
            for preset in suite.presets:
                try:
                    all_shapes = list(w.shapes(preset))
                except WorkloadError as exc:
                    raise UsageError(str(exc)) from None
                known_shapes.update(all_shapes)
                shapes = self._selected_shapes(w, preset)
                if self.user_inputs is not None and shapes:
                    self._user_shape(w, preset)  # validates now, so bad inputs exit 2 before anything runs
                    shapes = [USER_SHAPE]
                for shape in shapes:
                    for dtype in suite.dtypes:
                        dists = [d for d in suite.inputs if d in w.distributions]
                        for dist in [USER_INPUTS] if self.user_inputs is not None else dists:
                            for seed in [0] if self.user_inputs is not None else suite.seeds:
                                cases += [Case(w.name, preset, shape, dtype, dist, seed, b, w.op) for b in backends]
        planned = len(cases)
        cases = [c for c in cases if not any(fnmatch.fnmatchcase(c.key, p) for p in suite.exclude)]
        self.excluded = planned - len(cases)
        unknown = [s for s in suite.shapes if s not in known_shapes]
        if unknown:
            raise UsageError(
                f"unknown shape {unknown[0]!r} for the selected workloads; shapes: {', '.join(sorted(known_shapes))}"
            )
        if not cases:
            raise UsageError("the selection is empty: no workload x preset x shape x dtype x backend combination")
        return cases

    def _checkpoint_workloads(self, workloads: list[Workload], presets: tuple[str, ...]) -> list[Workload]:
        """The selected workloads that take the --model checkpoint (validated once, here: exit 2 if bad)."""
        path = self.options.model_path
        taking = []
        for w in workloads:
            for preset in presets:
                for name, shape in w.shapes(preset).items():
                    try:
                        checkpoint = w.checkpoint_shape(shape, path)
                    except WorkloadError as exc:
                        raise UsageError(str(exc)) from None
                    if checkpoint is None:
                        break
                    self._checkpoint_shapes[(w.name, preset, name)] = checkpoint
                    if w not in taking:
                        taking.append(w)
        if not taking:
            raise UsageError(
                f"--model {path}: none of the selected workloads ({', '.join(w.name for w in workloads)}) takes "
                "this checkpoint's architecture; select its llm.* workload with -w"
            )
        return taking

    def _selected_shapes(self, workload: Workload, preset: str) -> list[str]:
        """The preset's shape names that pass --shape (all when none was given)."""
        return [s for s in workload.shapes(preset) if not self.shape_filter or s in self.shape_filter]

    def _template(self, workload: Workload, preset: str, shape_name: str) -> Any:
        """A preset shape whose non-tensor settings (mask, routing rule) apply to tensors from a file."""
        shapes = workload.shapes(preset)
        if shape_name in shapes:
            return shapes[shape_name]
        selected = self._selected_shapes(workload, preset) or list(shapes)
        return shapes[selected[0]]

    def _user_shape(self, workload: Workload, preset: str) -> Any:
        assert self.user_inputs is not None
        try:
            return workload.shape_from_inputs(self.user_inputs, self._template(workload, preset, ""))
        except WorkloadError as exc:
            raise UsageError(f"--inputs: {exc}") from None

    # ----- running -----
    def _apply_threads(self) -> None:
        """torch's intra-op pool (the references, torch backends, input generation) at the run's thread count."""
        if self.options.threads is not None and torch.get_num_threads() != self.options.threads:
            torch.set_num_threads(self.options.threads)

    def run(
        self,
        cases: Iterable[Case],
        writer: Any,
        on_record: Callable[[Case, dict[str, Any]], None] | None = None,
        on_start: Callable[[Case], None] | None = None,
    ) -> RunSummary:
        summary = RunSummary()
        self._apply_threads()
        for _, group_iter in groupby(cases, key=lambda c: c.input_key):
            group_cases = list(group_iter)
            if on_start is not None:
                on_start(group_cases[0])  # generating inputs (and loading a model) counts toward the first case
            group = self._prepare(group_cases[0]) if self.isolation is None else None
            for case in group_cases:
                if on_start is not None:
                    on_start(case)
                if self.isolation is None:
                    record = self._run_case(case, group)
                else:
                    from harness import isolate

                    record = isolate.run_case(self, self.isolation[0], case, self.isolation[1])
                writer.write(record)
                summary.add(record["status"])
                if on_record is not None:
                    on_record(case, record)
        return summary

    def run_one(self, case: Case) -> dict[str, Any]:
        """One case on its own (an isolated child's whole job)."""
        self._apply_threads()
        return self._run_case(case, self._prepare(case))

    def placeholder_record(self, case: Case) -> dict[str, Any]:
        """A record for a case whose process died before writing one; the caller sets status and reason."""
        record = self._base_record(case, "")
        record["environment"] = self._environment(case.backend, None)
        return record

    def _prepare(self, case: Case) -> CaseInputs | str:
        """Inputs for a group, or the reason none could be had (a skip for each of its cases)."""
        workload = self.workloads.get(case.workload)
        dtype = DTYPES[case.dtype]
        if self.saved_in is not None:
            saved = self.saved_in.load_inputs(case)
            if saved is None:
                return f"{self.saved_in.root} has no saved inputs for {case.input_key}"
            try:
                shape = workload.shape_from_inputs(saved, self._template(workload, case.preset, case.shape))
            except WorkloadError as exc:
                return f"saved inputs for {case.input_key} do not fit {workload.name}: {exc}"
            inputs = saved
        elif self.user_inputs is not None:
            shape = self._user_shape(workload, case.preset)
            inputs = workload.cast_inputs(self.user_inputs, dtype)
        else:
            shape = self._checkpoint_shapes.get((case.workload, case.preset, case.shape)) or workload.shape(
                case.preset, case.shape
            )
            try:
                inputs = workload.make_inputs(shape, dtype, case.seed, case.inputs)
            except WorkloadUnavailableError as exc:
                return str(exc)
        return CaseInputs(
            workload, shape, case.dtype, inputs, problem=_nonfinite_problem(inputs), layerwise=self.options.layerwise
        )

    def _backend(self, name: str) -> tuple[Backend | None, str | None]:
        if name not in self._availability:
            self._availability[name] = self.backends.probe(name)
        availability = self._availability[name]
        if not availability.available:
            return None, f"backend {name} unavailable: {availability.reason}"
        if name not in self._instances:
            backend = self.backends.create(name, options=self.options.backend_options.get(name) or None)
            if self.options.threads is not None:
                backend.set_threads(self.options.threads)
            self._instances[name] = backend
        return self._instances[name], None

    def unavailable(self) -> dict[str, str]:
        """The backends probed so far that cannot run here, with the reason."""
        return {name: a.reason for name, a in self._availability.items() if not a.available}

    def _environment(self, name: str, backend: Backend | None) -> dict[str, Any]:
        if name not in self._environments:
            env: dict[str, Any] = {}
            if backend is not None:
                try:
                    env = dict(backend.environment())
                except Exception as exc:
                    env = {"error": f"environment() raised {type(exc).__name__}: {exc}"}
            self._environments[name] = env
        return {**host_environment(), "backend": self._environments[name]}

    def _base_record(self, case: Case, group: CaseInputs | str) -> dict[str, Any]:
        cls = self.backends.get(case.backend)
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "time_utc": utc_now(),
            "case": case.to_record(),
            "status": "skipped",
            "reason": "",
            "shape_info": group.shape.describe()
            if isinstance(group, CaseInputs) and hasattr(group.shape, "describe")
            else None,
            "shape_dims": dataclasses.asdict(group.shape)
            if isinstance(group, CaseInputs) and dataclasses.is_dataclass(group.shape)
            else None,
            "simulated": cls.simulated,
            "threads": self.options.threads if self.options.threads is not None else torch.get_num_threads(),
            "parity": None,
            "timing": None,
            "memory": None,
            "implementation": None,
        }

    def _run_case(self, case: Case, group: CaseInputs | str) -> dict[str, Any]:
        started = time.perf_counter()
        record = self._base_record(case, group)
        backend: Backend | None = None
        try:
            if isinstance(group, str):
                record["reason"] = group
            elif group.problem:
                record.update(status="error", reason=group.problem)
            else:
                backend, unavailable = self._backend(case.backend)
                support = backend.supports(case) if backend is not None else None
                if unavailable:
                    record["reason"] = unavailable
                elif support is not None and not support:
                    record["reason"] = support.reason
                else:
                    assert backend is not None
                    self._execute(case, group, backend, record)
        except UnsupportedCaseError as exc:
            record.update(status="skipped", reason=f"{case.backend}: {exc}", parity=None, timing=None)
        except Exception as exc:
            log.debug("case %s raised", case.key, exc_info=True)
            record.update(
                status="error",
                reason=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=-6),
            )
        record["environment"] = self._environment(case.backend, backend)
        record["duration_s"] = round(time.perf_counter() - started, 4)
        return record

    def _callers(
        self, backend: Backend, group: CaseInputs
    ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[[], Callable[[], Any]]]:
        """The op on the group's inputs, moved to the device once: `call(**extra)` with extra keyword tensors,
        outputs brought to the host; `device(**extra)`, outputs left on the device (timing); `bound()` the bare
        op bound by Backend.bind (timing, determinism), made only when used, since binding may export."""
        dev_inputs = map_tensors(group.inputs, backend.to_device)  # non-tensor inputs (a model) pass through
        args, kwargs = group.workload.split_args(dev_inputs, group.shape)
        op = getattr(backend, group.workload.op)

        def device(**extra: Any) -> Any:
            return op(*args, **{**kwargs, **map_tensors(extra, backend.to_device)})

        def call(**extra: Any) -> Any:
            result = device(**extra)
            backend.synchronize()
            return map_tensors(result, backend.to_host)

        return call, device, functools.cache(lambda: backend.bind(group.workload.op, args, kwargs))

    def _execute(self, case: Case, group: CaseInputs, backend: Backend, record: dict[str, Any]) -> None:
        workload, shape = group.workload, group.shape
        budget = workload.budget(case.dtype, shape, self.options.budget_overrides)
        call, device_call, bound = self._callers(backend, group)
        backend.reset_memory_stats()
        evaluation = workload.evaluate(call, group, budget)
        if evaluation.metrics is None:
            verdict = parity.merge("reference", extra=evaluation.failures)
            record.update(status="failed", reason=verdict.reason, parity={"verdict": verdict.to_record()})
            return
        baseline = self._baseline(case, group)
        if isinstance(baseline, str):
            record.update(status="skipped", reason=baseline)
            return
        if baseline is None:
            primary = (
                parity.judge(evaluation.metrics, budget, evaluation.prefix)
                if evaluation.judge_primary
                else parity.Verdict(True)
            )
        else:
            primary = parity.judge_against(
                evaluation.metrics,
                baseline["metrics"],
                budget,
                baseline["backend"],
                ratio=self.options.against_ratio,
                prefix=evaluation.prefix,
            )
        verdict = parity.merge(primary.mode, primary, extra=evaluation.failures, checks=evaluation.checks)
        deterministic = None
        if self.options.determinism:
            first = map_tensors(bound()(), backend.to_host)
            second = map_tensors(bound()(), backend.to_host)
            deterministic = parity.all_bitwise_equal(first, second)
        record["parity"] = {
            "metrics": evaluation.metrics.to_record(),
            "budget": asdict(budget),
            "reduction_length": workload.reduction_length(shape),
            "verdict": verdict.to_record(),
            "deterministic": deterministic,
            "baseline": None
            if baseline is None
            else {
                "backend": baseline["backend"],
                "source": baseline["source"],
                "metrics": baseline["metrics"].to_record(),
            },
            **evaluation.details,
        }
        record.update(status="passed" if verdict.passed else "failed", reason=verdict.reason)
        if self.saved_out is not None and evaluation.output is not None:
            self.saved_out.save(case, group.inputs, evaluation.output)
        if (
            not self.options.parity_only
            and case.inputs != "stress"
            and (self.options.time_oracles or not backend.oracle)
        ):
            device = str(self._environment(case.backend, backend)["backend"].get("device_name", ""))
            record.update(self._timer.time(case, group, backend, bound(), device_call, device))
        record["memory"] = backend.memory_stats() or None
        record["compile"] = backend.compile_stats() or None
        record["implementation"] = backend.case_details() or None

    def _baseline(self, case: Case, group: CaseInputs) -> dict[str, Any] | str | None:
        """The --against baseline's primary metrics for this group (computed once), a reason to skip, or None."""
        target = self.options.against
        if target is None:
            return None
        cached = group.memo.get("baseline")
        if cached is not None:
            return cached
        budget = group.workload.budget(case.dtype, group.shape, self.options.budget_overrides)
        if self.saved_in is not None:
            name = self.saved_in.baseline_backend()
            out = self.saved_in.load_output(case, name)
            if out is None:
                return f"{self.saved_in.root} has no output of {name} for {case.input_key}"
            metrics = parity.compare(out, group.reference(), budget)
            source = str(self.saved_in.root)
        else:
            name = target
            backend, unavailable = self._backend(name)
            if backend is None:
                return f"baseline {unavailable}"
            support = backend.supports(case)
            if not support:
                return f"baseline {name}: {support.reason}"
            evaluation = group.workload.evaluate(self._callers(backend, group)[0], group, budget)
            if evaluation.metrics is None:
                return f"baseline {name} gave a malformed output: {evaluation.failures[0].describe()}"
            metrics = evaluation.metrics
            source = "this run"
        group.memo["baseline"] = {"backend": name, "source": source, "metrics": metrics}
        return group.memo["baseline"]
