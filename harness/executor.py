"""One case's execution, in this process: inputs for its group, then per case a backend, the inputs moved to
that backend once, judging, the determinism check, timing, and the Record. A backend that raises becomes an
`error` record; a case that cannot run here (no saved inputs, backend unavailable, unsupported) a `skipped` one.

`Executor` is the interface the runner's loop drives; harness/isolate.py implements it with a child process
per case.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from harness import collective, invariance, layout, parity, rank_agreement, ranks
from harness.backend import Availability, Backend, BackendRegistry, UnsupportedCaseError, check_accepts
from harness.case_timing import CaseTimer
from harness.dtypes import DTYPES
from harness.host import host_environment
from harness.judging import Judge, Judgement
from harness.lazy import torch
from harness.planning import Planner, against_source
from harness.results import CaseRef, Record, TimingRecord, utc_now
from harness.run_options import RunOptions, Skip
from harness.saved import NOT_SAVED, SavedOutputs, SavedOutputsError
from harness.workload import Case, CaseInputs, WorkloadUnavailableError, map_tensors

log = logging.getLogger(__name__)

Prepared = CaseInputs | Skip | None  # a group's inputs, why there are none, or nothing (prepared elsewhere)


class Executor(Protocol):
    """Runs cases: `prepare` once per input group (its first case), `execute` each case of the group."""

    def prepare(self, case: Case) -> Prepared: ...

    def unrunnable(self, case: Case) -> Skip | None: ...

    def execute(self, case: Case, prepared: Prepared) -> Record: ...

    def unavailable(self) -> dict[str, str]: ...


def nonfinite_problem(inputs: Mapping[str, Any]) -> str | None:
    bad = []
    for name, t in inputs.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if nan or inf:
                bad.append(f"{name} has {nan} NaN and {inf} Inf values")
    return "non-finite inputs: " + "; ".join(bad) + " (parity needs finite inputs)" if bad else None


def own_copy(backend: Backend, t: Any) -> Any:
    """`t` on the backend's device in storage of its own: the group's host tensors serve every backend of the
    group, and `to_device` on the host may hand back the very tensor (or a view), so a backend writing into its
    inputs would change them for the backends after it. Only then is the host tensor cloned (on a device, the
    move already copies: no extra device memory)."""
    moved = backend.to_device(t)
    if isinstance(t, torch.Tensor) and moved.device == t.device and _overlaps(moved, t):
        moved = moved.clone()  # on the host: the backend's own storage (one move per case, as before)
    return moved


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class DeviceCall:
    """The op on a group's inputs, moved to the backend's device once (here, and nowhere else for this case):
    `call(**extra)` brings outputs to the host (judging), `device(**extra)` leaves them on the device (timing
    variants), `bound()` is the bare op bound by Backend.bind (timing, determinism), made only when first used,
    since binding may export a graph."""

    def __init__(self, backend: Backend, group: CaseInputs) -> None:
        self.backend = backend
        dev_inputs = {n: own_copy(backend, t) for n, t in group.tensors.items()}
        self.args, self.kwargs = group.workload.op_arguments(dev_inputs, group.shape, group.context)
        if group.workload.collective:  # a distributed op: every rank calls it on the backend's process group
            self.kwargs["group"] = collective.group_for(backend)
        check_accepts(backend, group.workload.op, self.kwargs)  # an op without block_table: a skip, not an error
        self._op = getattr(backend, group.workload.op)
        name = group.workload.op
        self.inputs = dev_inputs  # what `bound()` runs on: timing checksums them
        self.bound: Callable[[], Callable[[], Any]] = functools.cache(
            lambda: backend.bind(name, self.args, self.kwargs)
        )

    def device(self, **extra: Any) -> Any:
        return self._op(*self.args, **{**self.kwargs, **map_tensors(extra, self.backend.to_device)})

    def call(self, **extra: Any) -> Any:
        result = self.device(**extra)
        self.backend.synchronize()
        return map_tensors(result, self.backend.to_host)


class CaseExecutor:
    """Executes cases in this process; keeps backends, their availability and environments for the run."""

    def __init__(
        self,
        backends: BackendRegistry,
        planner: Planner,
        options: RunOptions,
        run_id: str,
        saved_in: SavedOutputs | None = None,
    ) -> None:
        self.backends = backends
        self.planner = planner
        self.options = options
        self.run_id = run_id
        self.saved_in = saved_in if saved_in is not None else against_source(options.against, backends)
        self.saved_out = SavedOutputs(options.save_outputs) if options.save_outputs else None
        self.judge = Judge(options, self.saved_in, self.backend, _call_for)
        self._timer = CaseTimer(options.timing)
        self._instances: dict[str, Backend] = {}
        self._availability: dict[str, Availability] = {}
        self._environments: dict[str, dict[str, Any]] = {}

    # ----- a group's inputs -----
    def prepare(self, case: Case) -> CaseInputs | Skip:
        """Inputs (and the workload's context) for the case's group on the host, or why none could be had."""
        workload = self.planner.workloads.get(case.workload)
        dtype = DTYPES[case.dtype]
        planner = self.planner
        try:
            if self.saved_in is not None:
                try:
                    template = planner.template(workload, case.preset, case.shape)
                    found = self.saved_in.fit_inputs(case, workload, template)
                except SavedOutputsError as exc:  # a saved case that cannot be judged: an error, never a skip
                    return Skip(str(exc), broken=True)
                if found is None:
                    return Skip(f"{NOT_SAVED}: {self.saved_in.root} has no saved inputs for {case.input_key}")
                inputs, shape = found
            elif planner.user_inputs is not None:
                shape = planner.user_shape(workload, case.preset)
                inputs = workload.cast_inputs(planner.user_inputs, dtype)
            else:
                shape = planner.generated_shape(workload, case)
                inputs = workload.make_inputs(shape, dtype, case.seed, case.inputs)
            shape = workload.for_dtype(shape, case.dtype)  # a quantized format rides in the shape
            context = workload.make_context(shape, dtype, case.seed)
        except WorkloadUnavailableError as exc:
            return Skip(str(exc))
        return CaseInputs(
            workload,
            shape,
            case.dtype,
            inputs,
            problem=nonfinite_problem(inputs),
            layerwise=self.options.layerwise,
            context=context,
        )

    # ----- one case -----
    def run_one(self, case: Case) -> Record:
        """One case on its own: its group prepared for it alone (an isolated child's whole job)."""
        return self.execute(case, self.prepare(case))

    def execute(self, case: Case, prepared: Prepared) -> Record:
        started = time.perf_counter()
        if prepared is None:
            prepared = self.prepare(case)
        group = prepared if isinstance(prepared, CaseInputs) else None
        fields: dict[str, Any] = {"status": "skipped"}
        backend: Backend | None = None
        outputs: Mapping[str, Any] | None = None
        try:
            if isinstance(prepared, Skip):
                fields.update(status=prepared.status, reason=prepared.reason)
            elif prepared.problem:
                fields.update(status="error", reason=prepared.problem)
            else:
                found = self.backend(case.backend)
                if isinstance(found, Backend):
                    backend = found
                    support = found.supports(case)
                    found = found if support else Skip(support.reason)
                if isinstance(found, Skip):
                    fields["reason"] = found.reason
                else:
                    outputs = self._run(case, prepared, found, fields)
        except UnsupportedCaseError as exc:
            fields.update(status="skipped", reason=f"{case.backend}: {exc}", parity=None, timing=None)
        except SystemExit as exc:  # a library's exit is the case's failure, not the run's end (nor its success)
            reason = f"the case called sys.exit({exc.code!r}), which would have ended the run"
            fields.update(status="error", reason=reason, traceback=traceback.format_exc(limit=-6))
        except Exception as exc:  # the sweep goes on: this case becomes an error record
            log.debug("case %s raised", case.key, exc_info=True)
            fields.update(
                status="error", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=-6)
            )
        if self.planner.workloads.get(case.workload).collective:
            self._ranks_agree(outputs, fields)
        environment = self._environment(case.backend, backend)
        return self.record(
            case, group, environment=environment, duration_s=round(time.perf_counter() - started, 4), **fields
        )

    def _run(self, case: Case, group: CaseInputs, backend: Backend, fields: dict[str, Any]) -> Mapping[str, Any] | None:
        """Judge, check determinism, save outputs, time, filling the record's `fields` as each step ends (an
        error record keeps what was done before the error); returns the judged outputs (None: skipped)."""
        on_device = DeviceCall(backend, group)  # the only move of this case's inputs to the device
        backend.reset_memory_stats()
        judged = self.judge.judge(case, group, on_device.call)
        if isinstance(judged, Skip):
            fields.update(status=judged.status, reason=judged.reason)
            return None
        if judged.parity.metrics is None:  # malformed output: the verdict alone says why
            fields.update(status="failed", reason=judged.parity.verdict.reason, parity=judged.parity)
            return judged.outputs
        fields["parity"] = self._with_invariance(
            self._with_determinism(judged, backend, on_device), judged, backend, group
        )
        fields.update(status="passed" if judged.passed else "failed", reason=judged.parity.verdict.reason)
        section = fields["parity"].section("invariance")
        if self.options.require_invariance and section and section["invariant"] is False and judged.passed:
            fields.update(status="failed", reason=invariance.failure_reason(dict(section)))
        if group.workload.collective:
            self._with_layout(case, group, backend, on_device, judged, fields)
        if self.saved_out is not None and judged.outputs:
            self.saved_out.save(case, group, dict(judged.outputs))
        if self._timed(case, backend):
            device = str(self._environment(case.backend, backend)["backend"].get("device_name", ""))
            budget = group.workload.budget(case.dtype, group.shape, self.options.budget_overrides)
            sections = self._timer.time(
                case,
                group,
                backend,
                on_device.bound(),
                on_device.device,
                device,
                inputs=on_device.inputs,
                budget=budget,
            )
            fields["timing"] = timing = TimingRecord(sections["timing"])
            if not timing.valid and fields["status"] == "passed":  # a number that cannot be trusted fails the case
                fields.update(status="failed", reason=timing.invalid_reason)
            if "timing_variants" in sections:
                fields["timing_variants"] = variants = {
                    n: TimingRecord(t) for n, t in sections["timing_variants"].items()
                }
                bad = next((t.invalid_reason for t in variants.values() if not t.valid), "")
                if bad and fields["status"] == "passed":  # so does one of its further timed calls (LLM decode)
                    fields.update(status="failed", reason=bad)
        fields["memory"] = backend.memory_stats() or None
        fields["compile"] = backend.compile_stats() or None
        fields["implementation"] = backend.case_details() or None
        return judged.outputs

    def _timed(self, case: Case, backend: Backend) -> bool:
        """Timing is skipped for --parity-only, stress inputs and (unless asked) reference backends."""
        opts = self.options
        if self.planner.workloads.get(case.workload).collective:  # ranks timing on their own would deadlock
            return False
        return not opts.parity_only and case.inputs != "stress" and (opts.time_oracles or not backend.oracle)

    def _with_determinism(self, judged: Judgement, backend: Backend, on_device: DeviceCall) -> Any:
        if not self.options.determinism:
            return judged.parity
        first = map_tensors(on_device.bound()(), backend.to_host)
        second = map_tensors(on_device.bound()(), backend.to_host)
        return dataclasses.replace(judged.parity, deterministic=parity.all_bitwise_equal(first, second))

    def _with_invariance(self, section: Any, judged: Judgement, backend: Backend, group: CaseInputs) -> Any:
        """--invariance: the parts of the case run alone, compared with its own output (harness.invariance)."""
        if not (self.options.invariance or self.options.require_invariance):
            return section
        found = invariance.check(group, judged.outputs.get("out"), lambda part: DeviceCall(backend, part).call)
        return dataclasses.replace(section, details={**section.details, "invariance": found})

    def _with_layout(
        self, case: Case, group: CaseInputs, backend: Backend, on_device: DeviceCall, judged: Judgement, fields: Any
    ) -> None:
        """A distributed case: its output at world size 1 too (harness/layout.py), failing a case that passed
        when the error grows with the number of ranks."""
        single = collective.group_for(backend, "single")
        budget = group.workload.budget(case.dtype, group.shape, self.options.budget_overrides)
        found = layout.check(
            group,
            judged.outputs.get("out"),
            lambda **extra: on_device.call(group=single, **extra),
            collective.world_size(),
            budget,
        )
        fields["parity"] = dataclasses.replace(fields["parity"], details={**fields["parity"].details, "layout": found})
        if found["checked"] and not found["within_budget"] and fields["status"] == "passed":
            fields.update(status="failed", reason=layout.failure_reason(found))

    def _ranks_agree(self, outputs: Mapping[str, Any] | None, fields: dict[str, Any]) -> None:
        """Under torchrun: every rank's outputs of a collective case against rank 0's (harness/rank_agreement.py).
        Every rank reaches this once per collective case, whatever its case did, so none waits forever."""
        coordinator = ranks.current()
        if coordinator is None:
            return
        why = f"{fields.get('status')}: {fields.get('reason') or ''}".strip(": ")
        try:
            mine = rank_agreement.fingerprint(outputs, why)
        except Exception as exc:  # still reach the exchange: the other ranks wait in it
            mine = ("none", f"its output could not be fingerprinted: {type(exc).__name__}: {exc}")
        messages = coordinator.gather(mine)
        differ = rank_agreement.differing(messages)
        parity_section = fields.get("parity")
        found = parity_section.section("layout") if parity_section is not None else None
        if found is not None:
            agreed = {**found, "ranks_agree": not differ, "ranks_differing": differ}
            details = {**parity_section.details, "layout": agreed}
            fields["parity"] = dataclasses.replace(parity_section, details=details)
        if differ and fields.get("status") == "passed":  # a rank without output: an error, else a failure
            silent = any(messages[r][0] == "none" for r in differ)
            reason = rank_agreement.failure_reason(messages, differ)
            fields.update(status="error" if silent else "failed", reason=reason)

    # ----- records -----
    def record(self, case: Case, group: CaseInputs | None, **fields: Any) -> Record:
        """The case's Record: what every record carries, plus `fields` (status, reason, sections)."""
        shape = group.shape if group is not None else None
        threads = self.options.threads
        return Record(
            run_id=self.run_id,
            time_utc=utc_now(),
            case=CaseRef(**case.to_record()),
            shape_info=shape.describe() if hasattr(shape, "describe") else None,
            shape_dims=dataclasses.asdict(shape) if dataclasses.is_dataclass(shape) else None,  # type: ignore[arg-type]
            simulated=self.backends.get(case.backend).simulated,
            threads=threads if threads is not None else torch.get_num_threads(),
            backend_options=self.options.options_for(case.backend),
            **fields,
        )

    def placeholder(self, case: Case, **fields: Any) -> Record:
        """The record of a case whose process died before writing one (--isolate): status, reason and output
        from the caller, the environment without the backend's (it was never created here)."""
        return self.record(case, None, environment=self._environment(case.backend, None), **fields)

    # ----- backends -----
    def unrunnable(self, case: Case) -> Skip | None:
        """Why the case cannot run whatever its inputs (its backend unavailable here, or refusing the case), so a
        group none of whose cases can run makes no inputs (a real shape's are gigabytes); None: it may run."""
        try:
            found = self.backend(case.backend)
            if isinstance(found, Skip):
                return found
            support = found.supports(case)
        except (Exception, SystemExit):  # probing or creating the backend failed: the case's execution records it
            return None
        return None if support else Skip(support.reason)

    def backend(self, name: str) -> Backend | Skip:
        """The run's instance of a backend (created once, with its --backend-option values), or why not."""
        if name not in self._availability:
            self._availability[name] = self.backends.probe(name)
        availability = self._availability[name]
        if not availability.available:
            return Skip(f"backend {name} unavailable: {availability.reason}")
        if name not in self._instances:
            if self.options.local_rank is not None:  # a torchrun rank: this node's device number LOCAL_RANK
                self.backends.get(name).place(self.options.local_rank)
            backend = self.backends.create(name, options=self.options.backend_options.get(name) or None)
            if self.options.threads is not None:
                backend.set_threads(self.options.threads)
            self._instances[name] = backend
        return self._instances[name]

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
                env |= type(backend).declared()  # device, eager_reference: what readers of the record go by
            self._environments[name] = env
        return {**host_environment(), "backend": self._environments[name]}


def _call_for(backend: Backend, group: CaseInputs) -> Callable[..., Any]:
    """The --against baseline backend's op on the group's inputs (moved to its device once per group)."""
    return DeviceCall(backend, group).call
