"""How readers of timings (the run summary, reports, compare, plots) treat them, in one place.

An invalid timing (`timing.valid == false`: the timed output differed from the parity output, the speed beat the
device's calibrated ceilings, an input was modified...) keeps its numbers in the record for forensics, but is
never ranked, averaged or plotted: every reader shows its reason instead. A speedup above IMPLAUSIBLE_SPEEDUP
against the same case's reference backend on the same device class is marked for review (KernelBench's rule),
never failed: it may be a real kernel win, or a timing that measured less than the work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from harness.record_traits import backend_device, is_eager_reference
from harness.results import Record, TimingRecord

IMPLAUSIBLE_SPEEDUP = 10.0
ORACLES = ("cpu-reference",)  # the float64 oracles: timed only with --time-oracles


def timings(record: Record) -> list[TimingRecord]:
    """The record's timing and its further timed calls (LLM decode)."""
    out = [] if record.timing is None else [record.timing]
    return out + list((record.timing_variants or {}).values())


def invalid_reason(record: Record) -> str:
    """Why the record's timing (or one of its variants) is invalid; "" when all are valid or it was not timed."""
    return next((t.invalid_reason for t in timings(record) if not t.valid), "")


def valid_timing(record: Record) -> TimingRecord | None:
    """The record's timing when it may be ranked, averaged or plotted: present, and valid with its variants."""
    return None if record.timing is None or invalid_reason(record) else record.timing


def left_out(records: Iterable[Record]) -> str:
    """One line on the invalid timings a figure left out, "" when none: how many, per backend, and why."""
    bad = [(r.case.backend, why) for r in records if (why := invalid_reason(r))]
    if not bad:
        return ""
    per_backend = ", ".join(f"{b} {n}" for b, n in Counter(b for b, _ in bad).most_common())
    reasons = Counter(why for _, why in bad).most_common()
    others = f" (and {plural(len(reasons) - 1, 'other reason')})" if len(reasons) > 1 else ""
    return f"{plural(len(bad), 'invalid timing')} left out ({per_backend}): {reasons[0][0]}{others}"


def plural(n: int, noun: str) -> str:
    """`1 invalid timing`, `2 invalid timings`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def device_class(record: Record) -> str:
    """cpu, cuda, npu...: the device class of the record's backend (harness/record_traits.py: as the record
    declares it; older records by their timing); "unknown" when nothing tells (then compared with no reference)."""
    return backend_device(record)


def eager_references(records: Iterable[Record]) -> list[str]:
    """The backends whose records say they are eager torch on their device (torch-cpu, cuda), in a fixed order:
    by device class, then name."""
    found = {(device_class(r), r.case.backend) for r in records if is_eager_reference(r)}
    return list(dict.fromkeys(name for _, name in sorted(found)))


def pick_reference(
    timed: Mapping[str, str], device: str, baseline: str | None = None, eager: Iterable[str] = ()
) -> str | None:
    """The backend a case's speed on `device` is judged plausible against, from those validly timed on the
    case (backend -> device class): the --baseline backend, else a backend of `eager` (eager_references: eager
    torch of that device class), else the oracle (cpu-reference, when timed with --time-oracles); only one of
    the same class."""
    for name in (baseline, *eager, *ORACLES):
        if name is not None and timed.get(name) == device and device != "unknown":
            return name
    return None


def review_notice(speedup: float, reference: str) -> str:
    """The review mark of a speedup, "" when it is plausible (at most IMPLAUSIBLE_SPEEDUP)."""
    if not speedup > IMPLAUSIBLE_SPEEDUP:
        return ""
    return (
        f"{speedup:.3g}x faster than {reference} on the same device class (over {IMPLAUSIBLE_SPEEDUP:g}x): "
        "check the timing"
    )
