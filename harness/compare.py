"""`harness compare OLD NEW`: per case, did it get slower (significantly, and by more than a threshold) or did
its parity get worse? A Markdown summary fit for a CI comment; exit 1 on a regression.

Speed: the raw per-call samples of both runs are compared with a two-sided Mann-Whitney U test (normal
approximation with a tie correction) and a bootstrap 95% interval of the ratio of medians; a case regresses
when the difference is significant at `alpha` AND the whole interval lies above 1 + `fail_on` (so run-to-run
drift on a shared machine that merely nudges the median past the threshold does not count). Parity: a case
that passed and now fails, or whose rel_l2 grew by more than `error_growth` times (errors under a tenth of
the budget are floored there, so noise-level changes of a tiny error do not count). Where a file holds no
samples, the two timings' 95% intervals bound the ratio instead (conservatively) and no rank test is made.

Every case timed in both runs gets a row of the ratio table (NEW/OLD with its 95% CI; harness.compare_formats
writes it as Markdown, LaTeX or CSV, harness.plots draws it), whether or not anything changed.

An invalid timing (timing.valid false) on either side makes the case's speed "not comparable": listed, never a
regression nor an improvement. A case over 10x faster than in OLD is listed "check_timing" (KernelBench's rule:
marked for review, not failed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from harness.results import Record, TimingRecord
from harness.timing_view import device_class, invalid_reason, review_notice

DEFAULT_FAIL_ON = 0.05
DEFAULT_ALPHA = 0.01
DEFAULT_ERROR_GROWTH = 2.0
ERROR_FLOOR = 0.1  # fraction of the rel_l2 budget under which error changes are noise


BOOTSTRAP = 2000


def ratio_interval(old: Iterable[float], new: Iterable[float], seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of median(new) / median(old)."""
    a, b = np.asarray(list(old), dtype=np.float64), np.asarray(list(new), dtype=np.float64)
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(a, size=(BOOTSTRAP, a.size)), axis=1)
    mb = np.median(rng.choice(b, size=(BOOTSTRAP, b.size)), axis=1)
    lo, hi = np.percentile(mb / ma, [2.5, 97.5])
    return float(lo), float(hi)


def mann_whitney_p(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test, normal approximation with a tie correction."""
    x, y = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    n1, n2 = x.size, y.size
    if n1 == 0 or n2 == 0:
        return 1.0
    both = np.concatenate([x, y])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    i = 0
    tie_term = 0.0
    while i < both.size:  # average ranks over ties
        j = i
        while j + 1 < both.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        t = j - i + 1
        tie_term += t**3 - t
        i = j + 1
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    mean = n1 * n2 / 2.0
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (abs(u1 - mean) - 0.5) / math.sqrt(var)  # continuity correction
    return float(math.erfc(max(z, 0.0) / math.sqrt(2.0)))


@dataclass(frozen=True)
class CaseChange:
    key: str
    kind: str  # slower | faster | newly_failing | error_grown | newly_errored | fixed | not_comparable | check_timing
    detail: str


@dataclass
class Comparison:
    common: int = 0
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    changes: list[CaseChange] = field(default_factory=list)
    ratios: list[CaseRatio] = field(default_factory=list)  # every case timed in both runs
    labels: tuple[str, str] = ("OLD", "NEW")
    alpha: float = DEFAULT_ALPHA
    fail_on: float = DEFAULT_FAIL_ON

    REGRESSIONS = ("slower", "newly_failing", "error_grown", "newly_errored")

    @property
    def regressions(self) -> list[CaseChange]:
        return [c for c in self.changes if c.kind in self.REGRESSIONS]

    def markdown(self, speed_table: str = "") -> str:
        """The summary line, then `speed_table` (compare_formats.to_markdown passes the ratio table), then the
        changes."""
        lines = [
            f"## harness compare: {len(self.regressions)} regression(s) in {self.common} common cases",
            "",
        ]
        if self.only_old or self.only_new:
            lines.append(f"{len(self.only_old)} cases only in OLD, {len(self.only_new)} only in NEW (not compared).")
            lines.append("")
        if speed_table:
            lines.append(speed_table)
        if not self.changes:
            lines.append("No significant speed change and no parity change.")
            return "\n".join(lines) + "\n"
        lines += ["### Changes", "", "| case | change | detail |", "|---|---|---|"]
        for c in sorted(self.changes, key=lambda c: (c.kind not in self.REGRESSIONS, c.kind, c.key)):
            mark = "**" if c.kind in self.REGRESSIONS else ""
            lines.append(f"| `{c.key}` | {mark}{c.kind}{mark} | {c.detail} |")
        return "\n".join(lines) + "\n"


CASE_FIELDS = ("backend", "workload", "preset", "shape", "dtype", "inputs", "seed")


def _few(values: list[str], most: int = 5) -> str:
    shown = ",".join(values[:most]) or "-"
    return shown + (f" (+{len(values) - most} more)" if len(values) > most else "")


def no_common_hint(old: Iterable[Record], new: Iterable[Record]) -> str:
    """Why two runs share no case: the case fields whose values differ between them (OLD's, then NEW's)."""
    a, b = list(old), list(new)
    parts = []
    for name in CASE_FIELDS:
        va = sorted({str(getattr(r.case, name)) for r in a})
        vb = sorted({str(getattr(r.case, name)) for r in b})
        if va != vb:
            parts.append(f"{name} {_few(va)} vs {_few(vb)}")
    if not parts:
        return "the same values of every case field, in different combinations"
    return "; ".join(parts)


def _latest(records: Iterable[Record]) -> dict[str, Record]:
    return {r.case.key: r for r in records}


def compare_runs(
    old: Iterable[Record],
    new: Iterable[Record],
    *,
    fail_on: float = DEFAULT_FAIL_ON,
    alpha: float = DEFAULT_ALPHA,
    error_growth: float = DEFAULT_ERROR_GROWTH,
    labels: tuple[str, str] = ("OLD", "NEW"),
) -> Comparison:
    a, b = _latest(old), _latest(new)
    result = Comparison(
        only_old=sorted(set(a) - set(b)),
        only_new=sorted(set(b) - set(a)),
        labels=labels,
        alpha=alpha,
        fail_on=fail_on,
    )
    for key in sorted(set(a) & set(b)):
        result.common += 1
        ra, rb = a[key], b[key]
        status = _status_change(key, ra, rb)
        result.changes += status or _error_change(key, ra, rb, error_growth)  # one parity change per case
        ratio = speed_ratio(key, ra, rb, fail_on, alpha)
        result.ratios += [ratio] if ratio is not None else []
        result.changes += _speed_change(key, ra, rb, ratio)
    return result


def _status_change(key: str, ra: Record, rb: Record) -> list[CaseChange]:
    sa, sb = ra.status, rb.status
    if sa == sb:
        return []
    if sb == "failed" and sa == "passed":
        return [CaseChange(key, "newly_failing", rb.reason[:160])]
    if sb in ("error", "crashed", "timeout") and sa not in ("error", "crashed", "timeout"):
        return [CaseChange(key, "newly_errored", f"{sb}: {rb.reason[:150]}")]
    if sb == "passed" and sa in ("failed", "error", "crashed", "timeout"):
        return [CaseChange(key, "fixed", f"was {sa}")]
    return []


def _error_change(key: str, ra: Record, rb: Record, growth: float) -> list[CaseChange]:
    ma = ra.parity.metrics if ra.parity is not None else None
    mb = rb.parity.metrics if rb.parity is not None else None
    if ma is None or mb is None or (rb.status != "passed" and ra.status != "passed"):
        return []
    budget = rb.parity.budget if rb.parity is not None else None
    floor = ERROR_FLOOR * (budget.rel_l2 if budget is not None else 0.0)
    before, after = ma.rel_l2, mb.rel_l2
    if after > growth * max(before, floor):
        return [CaseChange(key, "error_grown", f"rel_l2 {before:.3g} -> {after:.3g} (> {growth:g}x)")]
    return []


@dataclass(frozen=True)
class CaseRatio:
    """One case's speed NEW/OLD: the ratio of medians with its 95% CI (a bootstrap over both runs' samples, or
    the two timings' own intervals combined where samples are absent). `change` is "slower"/"faster" only where
    the CI excludes 1 beyond the noise threshold AND the rank test is significant: a ratio that merely looks
    large is not a change. An invalid timing on either side is never ranked: `invalid` says why, no ratio."""

    key: str
    workload: str
    backend: str
    label: str  # preset/shape dtype (and inputs where they vary): what the table shows of the key
    old_ns: float | None
    new_ns: float | None
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None  # Mann-Whitney two-sided p-value; None where samples were absent
    change: str = ""  # slower | faster | ""
    invalid: str = ""


def _label(r: Record) -> str:
    c = r.case
    extra = f" {c.inputs} s{c.seed}" if c.inputs not in ("", "normal") or c.seed else ""
    return f"{c.preset}/{c.shape} {c.dtype}{extra}"


def interval_ratio(ta: TimingRecord, tb: TimingRecord) -> tuple[float, float] | None:
    """A conservative 95% interval of NEW/OLD from the two timings' own intervals: [new low / old high,
    new high / old low]; None where either interval is missing."""
    if None in (ta.ci95_low_ns, ta.ci95_high_ns, tb.ci95_low_ns, tb.ci95_high_ns) or not ta.ci95_low_ns:
        return None
    return tb.ci95_low_ns / ta.ci95_high_ns, tb.ci95_high_ns / ta.ci95_low_ns


def speed_ratio(key: str, ra: Record, rb: Record, fail_on: float, alpha: float) -> CaseRatio | None:
    """The case's NEW/OLD ratio with its interval and significance; None where either run did not time it."""
    ta, tb = ra.timing, rb.timing
    if ta is None or tb is None or not ta.median_ns or not tb.median_ns:
        return None
    base = CaseRatio(key, rb.case.workload, rb.case.backend, _label(rb), ta.median_ns, tb.median_ns)
    invalid = [f"{side}: {why}" for side, r in (("OLD", ra), ("NEW", rb)) if (why := invalid_reason(r))]
    if invalid:  # a timing that measured less than the work is neither a regression nor an improvement
        return replace(base, invalid="timing invalid in " + "; ".join(invalid))
    ratio = tb.median_ns / ta.median_ns
    p: float | None = None
    if ta.samples_ns and tb.samples_ns:
        p = mann_whitney_p(ta.samples_ns, tb.samples_ns)
        lo, hi = ratio_interval(ta.samples_ns, tb.samples_ns)
    elif (bounds := interval_ratio(ta, tb)) is not None:
        lo, hi = bounds
    else:
        return replace(base, ratio=ratio)
    significant = p is None or p < alpha
    change = ""
    if significant and lo > 1 + fail_on:
        change = "slower"
    elif significant and hi < 1 / (1 + fail_on):
        change = "faster"
    return replace(base, ratio=ratio, low=lo, high=hi, p=p, change=change)


def _speed_change(key: str, ra: Record, rb: Record, ratio: CaseRatio | None) -> list[CaseChange]:
    if ratio is None:
        return []
    if ratio.invalid:
        return [CaseChange(key, "not_comparable", ratio.invalid)]
    if ratio.ratio is None or ratio.low is None or ratio.high is None:
        return []  # no interval: nothing to judge
    review = []
    if device_class(ra) == device_class(rb) and (notice := review_notice(1 / ratio.ratio, "the old run")):
        review = [CaseChange(key, "check_timing", notice)]
    detail = (
        f"median {ratio.old_ns / 1e3:.4g} -> {ratio.new_ns / 1e3:.4g} us ({ratio.ratio - 1:+.1%}, "
        f"95% CI {ratio.low - 1:+.1%}..{ratio.high - 1:+.1%}, "
        + ("from the timings' intervals)" if ratio.p is None else f"p={ratio.p:.2g})")
    )
    if ratio.change == "slower":
        return [CaseChange(key, "slower", detail)]
    if ratio.change == "faster":
        return [CaseChange(key, "faster", detail), *review]
    return review
