"""The port verdict of an `--against` run: per target backend, does it compute the same function as the
baseline it is judged against (PORT OK / PORT NOT OK), and its worst case in figures a person acts on: the
target's error against the float64 reference, the baseline's error on the same inputs, and their ratio next to
the allowed one. The text summary, the JSON summary and `harness report`'s against columns all read it here.

Also the one line that says where a --layerwise model run first diverges, printed as a case fails and in the
summary. Everything is computed from the records alone (a resumed run's older records included).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.names import DEFAULT_AGAINST_RATIO
from harness.parity import RATIO_FLOOR
from harness.results import ParityRecord, Record
from harness.saved import NOT_SAVED

RATIO_METRICS = ("rel_l2", "worst_row_rel_l2")  # the metrics parity.judge_against compares, in its order
BAD = ("error", "crashed", "timeout")
OK, NOT_OK, NOT_JUDGED = "PORT OK", "PORT NOT OK", "PORT NOT JUDGED"


@dataclass(frozen=True)
class RatioFigure:
    """One case's error next to the baseline's on one metric; the ratio is what the --against verdict judged
    (the baseline's error counted as at least `floor`, a fraction of the dtype's budget, so a baseline that is
    exact by luck does not make every rounding difference a failure)."""

    metric: str
    error: float  # the target's, against the float64 reference
    baseline_error: float  # the baseline's, on the same inputs
    floor: float

    @property
    def ratio(self) -> float:
        """error / max(baseline_error, floor); NaN counts as infinite (a NaN output is never within)."""
        base = max(self.baseline_error, self.floor)
        if not math.isfinite(self.error):
            return math.inf
        return self.error / base if base > 0 else (0.0 if self.error == 0 else math.inf)

    @property
    def floored(self) -> bool:
        return self.baseline_error < self.floor

    def describe(self, baseline: str, allowed: float | None) -> str:
        """`rel_l2 1.03 vs torch-cpu's 3.1e-07 (floored at 2e-07): 5.2e+06x (allowed 2x)`."""
        base = _num(self.baseline_error) + (f" (floored at {_num(self.floor)})" if self.floored else "")
        text = f"{self.metric} {_num(self.error)} vs {baseline}'s {base}: {_times(self.ratio)}"
        return text + (f" (allowed {_times(allowed)})" if allowed is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "error": self.error,
            "baseline_error": self.baseline_error,
            "floor": self.floor,
            "ratio": self.ratio,
        }


def _num(value: float) -> str:
    return f"{value:.2g}" if value < 1e-2 or value >= 1e3 else f"{value:.3g}"


def _times(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}x"


def ratio_figure(parity: ParityRecord | None) -> RatioFigure | None:
    """The case's metric furthest over (or closest to) the baseline's error; None when it was not judged
    against a baseline (absolute mode, a malformed output)."""
    if parity is None or parity.baseline is None or parity.metrics is None or parity.budget is None:
        return None
    if not parity.baseline.ratio_judged:  # judged by the workload's own checks against the baseline's
        return None
    figures = [
        RatioFigure(
            metric,
            getattr(parity.metrics, metric),
            getattr(parity.baseline.metrics, metric),
            RATIO_FLOOR * getattr(parity.budget, metric),
        )
        for metric in RATIO_METRICS
    ]
    return max(figures, key=lambda f: f.ratio)


def against_label(parity: ParityRecord | None) -> str | None:
    """`torch-cpu`, or `torch-cpu (saved in DIR)` for a baseline read from a --save-outputs directory."""
    if parity is None or parity.baseline is None:
        return None
    base = parity.baseline
    return base.backend if base.source == "this run" else f"{base.backend} (saved in {base.source})"


def divergence(record: Record) -> str | None:
    """Where a --layerwise run first diverges: `layer 2, op mlp (model.layers.2.mlp): own error 0.205 > budget
    4e-05`; what it found instead where no op is over; None where the case was not localized at all."""
    lw = record.parity.layerwise if record.parity is not None else None
    if lw is None:
        return None
    if lw.unavailable:
        return f"not localized: {lw.unavailable}"
    c = lw.culprit
    if c is None:
        return lw.explanation or "no op exceeds its own budget when fed the reference's inputs"
    return (
        f"first diverges at layer {c.layer}, op {c.kind} ({c.name}): own error {_num(c.median_row_rel_l2)} "
        f"(median row rel_l2) > budget {_num(c.budget)}"
    )


@dataclass(frozen=True)
class PortVerdict:
    """One target backend against its baseline: OK when at least one case was judged and none failed or errored."""

    backend: str
    against: str  # the baseline: a backend of this run, or `NAME (saved in DIR)`
    allowed_ratio: float | None  # --against-ratio, where the run knows it
    counts: Mapping[str, int]  # status -> cases
    not_saved: int = 0  # skipped cases an --against directory holds nothing for (planned here, not judged)
    worst: Record | None = None  # the failed case (else any case) with the largest ratio
    figure: RatioFigure | None = None  # the worst case's ratio, where it had one

    @property
    def judged(self) -> int:
        return self.counts.get("passed", 0) + self.counts.get("failed", 0)

    @property
    def errors(self) -> int:
        return sum(self.counts.get(s, 0) for s in BAD)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def not_judged(self) -> int:
        """Planned cases that were neither judged nor errored: skipped here, or with nothing saved to judge by."""
        return self.total - self.judged - self.errors

    @property
    def status(self) -> str:
        if self.counts.get("failed", 0) or self.errors:
            return NOT_OK
        return OK if self.judged else NOT_JUDGED

    def headline(self) -> str:
        """`PORT OK  ascend against cuda (saved in DIR)`, and how many planned cases it does not speak for."""
        line = f"{self.status}  {self.backend} against {self.against}"
        return line + (f"; {self.not_judged} of {self.total} cases not judged" if self.not_judged else "")

    def why(self) -> str:
        """`4 of 4 cases within 2x of torch-cpu's error`; `2 of 4 cases failed`; then what was not judged."""
        total, parts = self.total, []
        if self.status == OK:
            allowed = "the allowed ratio" if self.allowed_ratio is None else _times(self.allowed_ratio)
            parts.append(f"{self.judged} of {total} cases within {allowed} of {self.against}'s error")
        elif self.status == NOT_JUDGED:
            parts.append(f"none of {total} cases could be judged against {self.against}")
        else:
            failed = self.counts.get("failed", 0)
            if failed:
                parts.append(f"{failed} of {total} cases failed")
            if self.errors:
                parts.append(f"{self.errors} of {total} cases could not run (error, crash or timeout)")
        if self.not_judged:
            kinds = [f"{self.not_saved} not in the saved run"] if self.not_saved else []
            if self.not_judged > self.not_saved:
                kinds.append(f"{self.not_judged - self.not_saved} skipped here")
            parts.append(f"not judged: {', '.join(kinds)} (harness report lists why)")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        worst = None
        if self.worst is not None:
            worst = {
                "case": self.worst.case.key,
                "status": self.worst.status,
                "reason": self.worst.reason,
                "figure": None if self.figure is None else self.figure.to_dict(),
                "divergence": divergence(self.worst),
            }
        return {
            "verdict": self.status,
            "against": self.against,
            "allowed_ratio": self.allowed_ratio,
            "counts": dict(self.counts),
            "not_judged": self.not_judged,
            "not_saved": self.not_saved,
            "worst": worst,
        }


def _rank(record: Record, allowed: float) -> tuple[int, float]:
    """Failed cases first; then the largest ratio to the baseline. A case judged by its own checks alone (no
    figure) ranks by its closest check's share of its budget times the allowed ratio (the same ratio: that
    budget is the allowed multiple of the baseline's value); one failed on another check first."""
    failed, figure = record.status == "failed", ratio_figure(record.parity)
    if figure is not None:
        return (failed, figure.ratio)
    closest = record.parity.verdict.worst if record.parity is not None else None
    if failed or closest is None:
        return (failed, math.inf if failed else -math.inf)
    return (failed, closest.ratio * allowed)


def port_verdicts(
    records: Iterable[Record], against: str | None, allowed_ratio: float | None = None
) -> list[PortVerdict]:
    """Per target backend of an --against run (`against`: the flag's value, a backend or a directory), in the
    order the records name them; the baseline backend of this run is not a target of itself. [] without --against."""
    if against is None:
        return []
    by_backend: dict[str, list[Record]] = {}
    for r in records:
        by_backend.setdefault(r.case.backend, []).append(r)
    verdicts = []
    for backend, recs in by_backend.items():
        labels = [label for r in recs if (label := against_label(r.parity))]
        if backend == against and all(label == against for label in labels):
            continue  # the baseline backend judged against itself says nothing about a port
        judged = [r for r in recs if r.status in ("passed", "failed")]
        allowed = DEFAULT_AGAINST_RATIO if allowed_ratio is None else allowed_ratio
        worst = max(judged, key=lambda r: _rank(r, allowed)) if judged else None
        verdicts.append(
            PortVerdict(
                backend,
                labels[0] if labels else against,
                allowed_ratio,
                Counter(r.status for r in recs),
                sum(r.status == "skipped" and (r.reason or "").startswith(NOT_SAVED) for r in recs),
                worst,
                None if worst is None else ratio_figure(worst.parity),
            )
        )
    return verdicts
