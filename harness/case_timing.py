"""Timing one case: the bare op bound to its device-resident inputs, rotating over at least two input sets
(more where the backend asks, so repeated calls do not all run on a warm cache), measured with the backend's own
timer; checked outside the timed region (outputs, inputs, physical limits: timing_checks.py, ceilings.py) into
`valid` / `invalid_reason`; FLOP and byte counts turned into throughput and % of roofline; and the workload's
further timed calls (LLM decode)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from harness.backend import Backend
from harness.calibrate import Calibration, load_calibration
from harness.ceilings import Ceiling, calibrated, quick_host_ceiling, violation
from harness.dtypes import DTYPES
from harness.lazy import torch
from harness.parity import Budget
from harness.timing import Measurement, TimingConfig, measure
from harness.timing_checks import CheckedSets, InputSet, WatchedTimer, checked_rotation, checked_sets, modified_inputs

if TYPE_CHECKING:
    from harness.workload import Case, CaseInputs, TimingVariant, VariantInputs

log = logging.getLogger(__name__)


class CaseTimer:
    """Times cases at the run's TimingConfig; keeps each backend's calibration (its measured ceilings)."""

    def __init__(self, config: TimingConfig) -> None:
        self.config = config
        self._calibrations: dict[str, Calibration | None] = {}
        self._unguarded: set[str] = set()

    def time(
        self,
        case: Case,
        group: CaseInputs,
        backend: Backend,
        bound: Callable[[], Any],
        device_call: Callable[..., Any],
        device_name: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        budget: Budget | None = None,
    ) -> dict[str, Any]:
        """The record's `timing` (and `timing_variants`) sections for one case. `inputs` are the device tensors
        `bound` runs on; with them the timing is checked (harness/timing_checks.py) and says `valid`."""
        workload, shape, config = group.workload, group.shape, self.config
        checks = None
        if config.checks and inputs is not None:
            nbytes = sum(t.numel() * t.element_size() for t in group.tensors.values() if isinstance(t, torch.Tensor))
            wanted = int(backend.timing_input_sets(nbytes, config)) if config.rotate_inputs else 1
            checks = checked_sets(backend, group, inputs, bound, wanted, budget)
            measurement, problems = self._measure_checked(backend, checks)
            sets = len(checks.rotation.sets)
        else:
            rotating, sets = self._rotating(backend, group, bound)
            measurement = measure(rotating, backend.timer(config), config)
            problems = []
        seconds = measurement.stats.median_ns * 1e-9
        timing = measurement.to_record(workload.flops(shape), workload.bytes_moved(shape, DTYPES[case.dtype].itemsize))
        timing["input_sets"] = sets
        roofline = self._roofline(case, backend, seconds, timing, device_name)
        if roofline is not None:
            timing["roofline"] = roofline
        if checks is not None:
            self._judge(case, backend, device_name, timing, problems, seconds)
        tokens = workload.tokens_per_call(shape)
        if tokens:
            timing["tokens_per_s"] = tokens / seconds
        if measurement.stats.noisy:
            log.info("%s: noisy timing (%s); compare ratios measured side by side", case.key, measurement.stats.noise)
        sections: dict[str, Any] = {"timing": timing}
        variants = workload.timing_variants(device_call, group)
        if variants:
            sections["timing_variants"] = {}
        for name, variant in variants.items():
            sections["timing_variants"][name] = self._variant(case, group, backend, device_name, name, variant, budget)
        return sections

    def _variant(
        self,
        case: Case,
        group: CaseInputs,
        backend: Backend,
        device_name: str,
        name: str,
        variant: TimingVariant,
        budget: Budget | None,
    ) -> dict[str, Any]:
        """A further timed call's section, checked as the main op is where the variant gives its input sets;
        its problems name the variant ("decode timing: ...")."""
        config, made = self.config, variant.make_inputs
        problems: list[str] = []
        if config.checks and variant.inputs is not None and made is not None:
            given = variant.inputs
            first = InputSet(given.tensors, given.call, 0, given.load)
            make = lambda host, data: _variant_set(made(host), data)  # noqa: E731
            checks = checked_rotation(backend, group.tensors, first, make, 2, budget)
            m, problems = self._measure_checked(backend, checks)
        else:
            m = measure(variant.fn, backend.timer(config), config)
        seconds = m.stats.median_ns * 1e-9
        section = {
            **m.to_record(variant.flops, variant.bytes_moved),
            "tokens_per_s": variant.tokens / seconds if variant.tokens else None,
        }
        if config.checks:
            if variant.inputs is not None and made is not None:
                section["input_sets"] = 2
            self._judge(case, backend, device_name, section, problems, seconds, prefix=f"{name} timing: ")
        return section

    def _measure_checked(self, backend: Backend, checks: CheckedSets) -> tuple[Measurement, list[str]]:
        """The rotation timed with the backend's timer; what the checks found (inputs checksummed across the timed
        region, outputs of the first and last timed calls against the untimed ones), all outside the region."""
        before = checks.rotation.checksums()
        timer = WatchedTimer(backend.timer(self.config), checks.rotation, backend)
        measurement = measure(checks.rotation.fn, timer, self.config)
        problems = [
            f"input {n} was modified by the timed calls" for n in modified_inputs(before, checks.rotation.checksums())
        ]
        problems += checks.problems + checks.after_timing(timer.first, backend)
        timer_finding = measurement.notes.get("invalid_reason")  # a device timer's own check (cuda's streams)
        return measurement, problems + ([timer_finding] if timer_finding else [])

    def _judge(
        self,
        case: Case,
        backend: Backend,
        device_name: str,
        timing: dict[str, Any],
        problems: list[str],
        seconds: float,
        prefix: str = "",
    ) -> None:
        """The physical-limit guard added to `problems`; `valid`, `invalid_reason` and `problems` (each after
        `prefix`, which names a timing variant) set in `timing`."""
        too_fast = violation(self._ceilings(case, backend, device_name), timing["flops"], timing["bytes"], seconds)
        problems = [prefix + p for p in problems + ([too_fast] if too_fast else [])]
        timing.update(valid=not problems, invalid_reason=problems[0] if problems else "", problems=problems)
        if problems:
            log.warning("%s: timing invalid: %s", case.key, "; ".join(problems))

    def _calibration(self, case: Case, backend: Backend, device_name: str) -> Calibration | None:
        """The backend's stored `harness calibrate` ceilings on this device (loaded once), or None."""
        name = case.backend
        if name not in self._calibrations:
            key = backend.calibration_key()
            self._calibrations[name] = load_calibration(key, device_name) if device_name else None
        return self._calibrations[name]

    def _ceilings(self, case: Case, backend: Backend, device_name: str) -> list[Ceiling]:
        """What the guard holds the timing to: the stored calibration, and on the host CPU the quick one."""
        cal = self._calibration(case, backend, device_name)
        found = [calibrated(cal)] if cal is not None and cal.matmul_tflops else []
        if backend.device == "cpu" or backend.simulated:
            found.append(quick_host_ceiling())
        elif not found and backend.name not in self._unguarded:
            self._unguarded.add(backend.name)
            log.info(
                "%s: no calibration stored for %s, timings not held to a ceiling (harness calibrate)",
                backend.name,
                device_name,
            )
        return found

    def _roofline(
        self, case: Case, backend: Backend, seconds: float, timing: dict[str, Any], device_name: str
    ) -> dict[str, Any] | None:
        """% of the device's measured roofline, where `harness calibrate` has stored its ceilings."""
        cal = self._calibration(case, backend, device_name)
        if cal is None:
            return None
        mode = backend.math_mode(case.dtype)
        return cal.roofline(case.dtype, timing["flops"], timing["bytes"], seconds, mode=mode)

    def _rotating(self, backend: Backend, group: CaseInputs, timed: Callable[[], Any]) -> tuple[Callable[[], Any], int]:
        """The timed call cycling over copies of the inputs when the backend asks for them (inputs that fit in
        its cache), and how many sets there are."""
        tensors = [t for t in group.tensors.values() if isinstance(t, torch.Tensor)]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        sets = max(1, int(backend.timing_input_sets(nbytes, self.config)))
        if sets == 1 or group.context is not None:  # the workload's context (a built model) is never copied
            return timed, 1
        calls = [timed] + [_bound_copy(backend, group) for _ in range(sets - 1)]
        for call in calls[1:]:
            call()  # each set once before timing: per-tensor memos fill outside any captured graph
        position = itertools.cycle(calls)
        return lambda: next(position)(), sets  # noqa: PLW0108 - calls the next set's op


def _bound_copy(backend: Backend, group: CaseInputs) -> Callable[[], Any]:
    """The op bound to fresh copies of the inputs (`to_device` may hand back the very tensor on the host)."""
    dev_inputs = {n: backend.to_device(t.clone()) for n, t in group.tensors.items()}
    args, kwargs = group.workload.op_arguments(dev_inputs, group.shape, group.context)
    return backend.bind(group.workload.op, args, kwargs)


def _variant_set(given: VariantInputs, data: int) -> InputSet:
    """A timing variant's input set as the checks rotate over it."""
    return InputSet(given.tensors, given.call, data, given.load)
