"""The checks that make a timing hard to fool, all run outside the timed region (issue 23).

A backend can look fast by not doing the work: returning an output cached from an earlier call on the same
tensors (keyed on data pointers), returning the buffer of its first call without recomputing, writing into its
inputs, or reporting impossible times. So the timed call rotates over two input sets with different data, set 1
in storage whose contents change after a first, untimed call on it (a pointer-keyed memo or a bound call's
buffer then answers with stale data); the outputs of timed calls (the first, and the last on each set) are
compared with honest untimed outputs of the same op on the same data; every input is checksummed before and
after the timed region. harness/ceilings.py adds the physical-limit guard.

An honest output may differ from call to call (non-deterministic reductions): a timed output passes when it is
bitwise equal to the untimed one or within twice the case's rel_l2 budget of it (two outputs each within budget
of the reference are within twice the budget of each other).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.backend import Backend
from harness.lazy import torch
from harness.parity import Budget

HASHED_BYTES = 1 << 22  # inputs up to 4 MiB are hashed whole; larger ones: sums plus a hash of both ends
OUTPUT_SLACK = 2.0  # a timed output may be this many rel_l2 budgets away from the untimed output of the same data


def perturbed(t: Any) -> Any:
    """Set 1's data: floats reversed over every dimension, integers (lengths, ids) rolled along the last one.

    Both keep what a valid input needs (finite values of the same scale, ids and lengths from the same sets),
    and both differ from the original unless it is constant."""
    if not isinstance(t, torch.Tensor) or t.numel() < 2:
        return t
    if t.is_floating_point():
        return t.flip(tuple(range(t.dim())))
    return t.roll(1, dims=-1)


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of an op's output (a tensor, a tuple, a Routing or other dataclass, a mapping), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in output_tensors(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in output_tensors(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in output_tensors(getattr(value, f.name))]
    logits = getattr(value, "logits", None)  # a model output object
    return output_tensors(logits) if logits is not None else []


def snapshot(backend: Backend, value: Any) -> list[torch.Tensor]:
    """Host copies of an output's tensors, safe from later calls that reuse the output's buffer."""
    backend.synchronize()
    return [backend.to_host(t.detach()).clone() for t in output_tensors(value)]


def mismatch(out: list[torch.Tensor], truth: list[torch.Tensor], budget: Budget | None) -> str | None:
    """Why `out` is not the output `truth` (bitwise, or within OUTPUT_SLACK rel_l2 budgets); None if it is."""
    if len(out) != len(truth):
        return f"{len(out)} output tensors against {len(truth)}"
    allowed = OUTPUT_SLACK * budget.rel_l2 if budget is not None else 0.0
    for i, (o, t) in enumerate(zip(out, truth, strict=True)):
        where = f" (output {i})" if len(out) > 1 else ""
        if tuple(o.shape) != tuple(t.shape):
            return f"shape {list(o.shape)} against {list(t.shape)}{where}"
        if torch.equal(o, t):
            continue
        o64, t64 = o.to(torch.float64), t.to(torch.float64)
        if not torch.equal(torch.isfinite(o64), torch.isfinite(t64)):
            return f"non-finite values differ{where}"
        both = torch.isfinite(t64)
        diff = float((o64[both] - t64[both]).norm())
        norm = float(t64[both].norm())
        rel = diff / norm if norm > 0 else float("inf")
        if not rel <= allowed:
            return f"rel_l2 {rel:.3g}{where}"
    return None


def identical_for_different_data(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    """True when two outputs of different inputs are bitwise the same and not constant: nothing recomputed."""
    floats = [
        (a, b)
        for a, b in zip(first, second, strict=False)
        if a.is_floating_point() and a.numel() > 1 and bool(torch.isfinite(a).all())
    ]
    return bool(floats) and all(torch.equal(a, b) and bool((a.max() - a.min()) != 0) for a, b in floats)


def checksum(t: torch.Tensor) -> tuple[Any, ...]:
    """A cheap fingerprint of a tensor's contents: a float64 sum and a hash of its bytes (both ends of a big one)."""
    host = t.detach().to("cpu").contiguous()
    raw = host.view(torch.uint8).reshape(-1) if host.numel() else host.reshape(-1)
    digest = hashlib.blake2b(digest_size=16)
    if raw.numel() <= HASHED_BYTES:
        digest.update(raw.numpy().tobytes())
    else:
        digest.update(raw[: HASHED_BYTES // 2].numpy().tobytes())
        digest.update(raw[-HASHED_BYTES // 2 :].numpy().tobytes())
    total = float(host.to(torch.float64).nansum()) if host.numel() else 0.0
    return (tuple(host.shape), total, digest.hexdigest())


@dataclass
class InputSet:
    """Device-resident inputs the timed call rotates over: the bound op on them and which data they hold
    (0: the case's, whose untimed output is `truths[0]`; 1: the perturbed copy)."""

    tensors: Mapping[str, Any] | Callable[[], Mapping[str, Any]]  # or what the call reads now (a KV cache)
    call: Callable[[], Any]
    data: int
    load: Callable[[Mapping[str, Any]], None] | None = None  # refill the same storage with other host data
    last: Any = None  # the latest timed call's output on this set (a reference: copied only after timing)

    def current(self) -> Mapping[str, Any]:
        return self.tensors() if callable(self.tensors) else self.tensors


@dataclass
class Rotation:
    """The timed call: each call runs the next set's op and keeps a reference to its output (no copy)."""

    sets: list[InputSet]
    first: Any = None
    calls: int = 0
    fn: Callable[[], None] = field(init=False)

    def __post_init__(self) -> None:
        order = itertools.cycle(self.sets)

        def rotating() -> None:
            s = next(order)
            s.last = s.call()

        self.fn = rotating

    def checksums(self) -> dict[tuple[int, str], tuple[Any, ...]]:
        return {
            (i, name): checksum(t)
            for i, s in enumerate(self.sets)
            for name, t in s.current().items()
            if isinstance(t, torch.Tensor)
        }


class WatchedTimer:
    """The backend's timer, unchanged, plus a copy of the very first timed call's output taken after that
    timed region ends (the warm-up's first sample, which no statistic uses)."""

    def __init__(self, timer: Any, rotation: Rotation, backend: Backend) -> None:
        self._timer, self._rotation, self._backend = timer, rotation, backend
        self.first: list[torch.Tensor] | None = None

    def __getattr__(self, name: str) -> Any:  # method, notes, host_cpu, max_calls_per_sample: the timer's own
        return getattr(self._timer, name)

    def elapsed_ns(self, fn: Callable[[], object], calls: int) -> float:
        ns = self._timer.elapsed_ns(fn, calls)
        if self.first is None:
            self.first = snapshot(self._backend, self._rotation.sets[0].last)
        return float(ns)


def modified_inputs(before: Mapping[tuple[int, str], Any], after: Mapping[tuple[int, str], Any]) -> list[str]:
    """The inputs whose checksum changed across the timed region, as 'q' or 'q (input set 1)'."""
    return [
        f"{name}" if i == 0 else f"{name} (input set {i})" for (i, name), c in before.items() if after[i, name] != c
    ]


@dataclass
class CheckedSets:
    """The timed rotation with the untimed outputs to compare against, and what was wrong before timing."""

    rotation: Rotation
    truths: list[list[torch.Tensor]]  # by data index: the untimed output of the case's data, of the perturbed
    budget: Budget | None
    problems: list[str] = field(default_factory=list)

    def after_timing(self, first: list[torch.Tensor] | None, backend: Backend) -> list[str]:
        """What the timed calls got wrong: the first call (set 0) and the last call on every set."""
        found = []
        outputs = [("first", 0, first)] + [
            ("last", i, snapshot(backend, s.last)) for i, s in enumerate(self.rotation.sets) if s.last is not None
        ]
        for label, i, out in outputs:
            if out is None:
                continue
            why = mismatch(out, self.truths[self.rotation.sets[i].data], self.budget)
            if why:
                where = f"input set {i} ({why}; the {label} timed call)"
                found.append(f"timed output differs from the op's untimed output on {where}")
        return found


MakeSet = Callable[[Mapping[str, Any], int], InputSet]  # (host tensors, data index) -> a fresh device set


def bound_set(backend: Backend, group: Any, host: Mapping[str, Any], data: int = 0) -> InputSet:
    """The op bound to fresh device copies of `host` (`to_device` may hand back the very tensor on the host)."""
    dev = {n: backend.to_device(t.clone()) if isinstance(t, torch.Tensor) else t for n, t in host.items()}
    args, kwargs = group.workload.op_arguments(dev, group.shape, group.context)

    def load(other: Mapping[str, Any]) -> None:
        for n, t in dev.items():
            if isinstance(t, torch.Tensor):
                t.copy_(other[n])

    return InputSet(dev, backend.bind(group.workload.op, args, kwargs), data, load)


def checked_sets(
    backend: Backend,
    group: Any,
    inputs: Mapping[str, Any],
    bound: Callable[[], Any],
    n_sets: int,
    budget: Budget | None,
) -> CheckedSets:
    """The main op's sets: set 0 is the parity run's own device inputs (see `checked_rotation`)."""
    first = InputSet(inputs, bound, 0)
    return checked_rotation(backend, group.tensors, first, lambda h, d: bound_set(backend, group, h, d), n_sets, budget)


def checked_rotation(
    backend: Backend,
    host: Mapping[str, Any],
    first: InputSet,
    make: MakeSet,
    n_sets: int,
    budget: Budget | None,
) -> CheckedSets:
    """Set 0: `first`, on the case's data `host`. Set 1: storage first called on with the case's data, then
    refilled in place with the perturbed data, so a result kept per pointer or per bound call is stale.
    Further sets (a device asking for more, to rotate through its cache): copies of the case's data. The truth
    of the perturbed data comes from one call on storage that never held anything else, freed before set 1 is
    made (two input sets in memory at most)."""
    truth0 = snapshot(backend, first.call())
    host1 = {n: perturbed(t) for n, t in host.items()}
    differs = any(isinstance(t, torch.Tensor) and not torch.equal(t, host1[n]) for n, t in host.items())
    probe = make(host1, 1)
    truth1 = snapshot(backend, probe.call())
    del probe
    problems = []
    if differs and identical_for_different_data(truth0, truth1):
        problems.append("the op gave the same output for different inputs (input sets 0 and 1): it did not recompute")
    sets = [first]
    for i in range(1, max(2, n_sets)):
        made = make(host, 0)
        warm = snapshot(backend, made.call())  # untimed: per-tensor memos (and any cheat's) fill here
        why = mismatch(warm, truth0, budget)
        if why:
            problems.append(f"an untimed call on a copy of the inputs (set {i}) differs from set 0's output ({why})")
        if i == 1 and made.load is not None:
            made.load(host1)
            made.data = 1
            backend.synchronize()
        sets.append(made)
    return CheckedSets(Rotation(sets), [truth0, truth1], budget, problems)
