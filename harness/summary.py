"""The end-of-run summary: one block per backend that ran, one line per reason a backend could not, then the
cases that failed or errored, in plain text that fits the terminal (80 columns included).

A block says how many cases passed, failed and were skipped (with the commonest reason), the case closest to
(or furthest over) its budget with the metric, value and budget, and the speed against a baseline backend over
the cases timed on both. Nothing a person acts on is cut: reasons and verdicts wrap, only case names shorten.
The full per-case table is `harness report`.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness import invariance
from harness.parity import Failure
from harness.port import PortVerdict, divergence, port_verdicts
from harness.quant_parity import FORMAT_ERROR
from harness.results import CaseRef, Record
from harness.saved import NOT_SAVED
from harness.timing_view import eager_references, invalid_reason, left_out, plural, valid_timing

MAX_LISTED = 20  # failing / errored cases listed in full; the rest are counted (harness report lists all)
BAD = ("failed", "error", "crashed", "timeout")


@dataclass(frozen=True)
class RunFacts:
    """What the run itself knows beyond its records."""

    suite: str
    out_path: str
    seconds: float
    threads: int | None = None
    excluded: int = 0  # cases the suite's exclude list left out
    unavailable: Mapping[str, str] | None = None  # backend -> why it cannot run here
    against: str | None = None  # --against: a backend or a --save-outputs directory
    against_ratio: float | None = None  # --against-ratio


def case_label(case: CaseRef, *, backend: bool = False) -> str:
    """`attention.decode tiny/gqa float16 stress seed0` (and `@backend`)."""
    text = f"{case.workload} {case.preset}/{case.shape} {case.dtype} {case.inputs} seed{case.seed}"
    return f"{text} @{case.backend}" if backend else text


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _wrap(text: str, width: int, indent: str, label: str = "") -> list[str]:
    """`text` wrapped to `width`; the first line starts with `indent + label`, the rest align under the text
    (under `indent + "  "` where there is no label)."""
    rest = indent + (" " * len(label) if label else "  ")
    return textwrap.wrap(text, width, initial_indent=indent + label, subsequent_indent=rest, break_on_hyphens=False)


def _figure(value: float) -> str:
    return f"{value:.2g}" if value < 1e-2 or value >= 1e3 else f"{value:.3g}"


def _speed(records: list[Record], baseline: Mapping[str, float]) -> tuple[float, int] | None:
    """Geometric mean of baseline-median / own-median over the cases timed on both, and how many there were."""
    logs = []
    for r in records:
        base = baseline.get(r.case.input_key)
        timing = valid_timing(r)  # an invalid timing is never averaged
        if timing is not None and base and timing.median_ns:
            logs.append(math.log(base / timing.median_ns))
    return (math.exp(sum(logs) / len(logs)), len(logs)) if logs else None


def budget_share(ratio: float) -> str:
    """`31% of it`, `1.8x it`; past 10x `1.05e+07x it`: a percentage of eight digits is hard to read."""
    if not math.isfinite(ratio):
        return "over"
    return f"{ratio:.0%} of it" if ratio < 1 else f"{ratio:.3g}x it"


def worst_case(records: Iterable[Record]) -> tuple[Record, Failure] | None:
    """The case whose check is furthest over (or closest to) its budget, and that check."""
    judged = [(r, r.verdict.worst) for r in records if r.verdict is not None and r.verdict.worst is not None]
    return max(judged, key=lambda rw: rw[1].ratio) if judged else None


def format_errors(records: Iterable[Record]) -> dict[str, tuple[float, float]]:
    """Per quantized format (case dtype): the worst kernel error (rel_l2 against the format's emulation, the
    verdict's) and the worst format error (rel_l2 against the unquantized function), over the cases with both."""
    out: dict[str, tuple[float, float]] = {}
    for r in records:
        p = r.parity
        section = p.section(FORMAT_ERROR) if p is not None and p.metrics is not None else None
        if section is None or p is None or p.metrics is None:
            continue
        kernel, fmt = out.get(r.case.dtype, (0.0, 0.0))
        out[r.case.dtype] = (max(kernel, p.metrics.rel_l2), max(fmt, section["rel_l2"]))
    return out


def _skip_kind(reason: str) -> str:
    """A skip reason as counted: "not in the saved run: ... KEY" names its case, but is one reason for them all."""
    return NOT_SAVED if reason.startswith(NOT_SAVED) else reason


def _block(
    name: str, records: list[Record], baseline: Mapping[str, float], width: int, reference: str | None = None
) -> list[str]:
    """One backend's lines; speed as a ratio to `reference` (eager torch of the run: `baseline` its medians)."""
    counts = Counter(r.status for r in records)
    head = f"{name}  {counts['passed']} passed, {counts['failed']} failed"
    errors = sum(counts[s] for s in ("error", "crashed", "timeout"))
    head += f", {errors} errors" if errors else ""
    head += f", {counts['skipped']} skipped"
    lines = _wrap(head, width, "")
    skips = Counter(_skip_kind(r.reason) for r in records if r.status == "skipped" and r.reason)
    if skips:
        reason, n = skips.most_common(1)[0]
        others = f" (and {plural(len(skips) - 1, 'other reason')})" if len(skips) > 1 else ""
        lines += _wrap(f"skipped {n}: {reason}{others}", width, "  ")
    found = worst_case(records)
    if found is not None:
        r, w = found
        label = _fit(case_label(r.case), width - 10)
        if w.detail:
            figure = f"{w.metric}: {w.detail}"
        else:
            share = budget_share(w.ratio)
            figure = f"{w.metric} {_figure(w.value)} (budget {_figure(w.budget)}, {share})"
        lines += [f"  worst   {label}", *_wrap(figure, width, "          ")]
        where = divergence(r)
        if where is not None:
            lines += _wrap(where, width, "  ", "layers  ")
    for fmt, (kernel, error) in format_errors(records).items():
        text = f"worst rel_l2: kernel {_figure(kernel)} vs emulation, format {_figure(error)} vs unquantized"
        lines += _wrap(text, width, "  ", f"{fmt:<7} ")
    not_invariant, checked, diff = invariance.tally(records)
    if checked:
        text = f"{not_invariant} of {checked} cases not batch invariant" + (
            f" (largest difference {_figure(diff)})" if not_invariant and diff is not None else ""
        )
        lines += _wrap(text, width, "  ", "batch   ")
    if any(r.simulated for r in records):
        lines += ["  speed   simulated: timings say nothing about the real device"]
    elif name == reference and baseline:
        lines += [f"  speed   the baseline of the speed ratios ({plural(len(baseline), 'case')} timed)"]
    else:
        speed = _speed(records, baseline)
        if speed is not None:
            ratio, n = speed
            verb = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
            text = f"{verb} than {reference} (geometric mean of {plural(n, 'case')} timed on both)"
            lines += _wrap(text, width, "  ", "speed   ")
        elif any(invalid_reason(r) for r in records):
            n = sum(bool(invalid_reason(r)) for r in records)
            lines += _wrap(f"not ranked: {plural(n, 'invalid timing')} (reasons below)", width, "  ", "speed   ")
        elif not any(r.timing for r in records):
            lines += ["  speed   not timed"]
    return lines


def _port_block(verdict: PortVerdict, width: int) -> list[str]:
    """`PORT NOT OK  bug-wrong-gqa against torch-cpu`, why, and the worst case with its error ratio."""
    lines = _wrap(verdict.headline(), width, "")
    lines += _wrap(verdict.why(), width, "  ")
    r = verdict.worst
    if r is None:
        return lines
    lines += [f"  worst   {_fit(case_label(r.case), width - 10)}"]
    if verdict.figure is not None:
        lines += _wrap(verdict.figure.describe(verdict.against, verdict.allowed_ratio), width, "          ")
    elif r.status == "passed" and r.parity is not None and r.parity.verdict.worst is not None:
        w = r.parity.verdict.worst  # judged by its own checks (an LLM's): the closest to its budget
        text = f"{w.metric} {w.value:.3g} (budget {w.budget:.3g}, {w.ratio:.0%} of it)"
        lines += _wrap(text, width, "          ")
    if r.status == "failed" and (verdict.figure is None or verdict.figure.ratio <= (verdict.allowed_ratio or 0)):
        lines += _wrap(f"failed on: {r.reason}", width, "          ")  # over an absolute check, not the ratio
    return lines


def render(records: Iterable[Record], facts: RunFacts, width: int = 80) -> str:
    """The summary as text lines of at most `width` characters (long reasons wrap, case names shorten)."""
    width = max(40, width)
    records = list(records)
    unavailable = dict(facts.unavailable or {})
    by_backend: dict[str, list[Record]] = {}
    for r in records:
        by_backend.setdefault(r.case.backend, []).append(r)
    reference = next(iter(eager_references(records)), None)  # eager torch: torch-cpu before cuda
    baseline = {
        r.case.input_key: t.median_ns
        for r in by_backend.get(reference or "", [])
        if (t := valid_timing(r)) is not None and t.median_ns
    }
    ran = [b for b in by_backend if b not in unavailable]
    head = (
        f"suite {facts.suite}: {plural(len(records), 'case')} on {plural(len(ran), 'backend')} in {facts.seconds:.0f} s"
    )
    if facts.threads:
        head += f", {facts.threads} thread{'s' if facts.threads > 1 else ''}"
    lines = _wrap(head, width, "")
    if facts.excluded:
        lines += _wrap(
            f"({facts.excluded} cases left out by the suite's exclude list, "
            "as the suite's description in harness list says)",
            width,
            "",
        )
    for name in ran:
        lines += ["", *_block(name, by_backend[name], baseline, width, reference)]
    if unavailable:
        lines += ["", "not available here"]
        by_reason: dict[str, list[str]] = {}
        for name, reason in unavailable.items():
            by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            lines += _wrap(f"{', '.join(names)}: {reason}", width, "  ")
    bad = [r for r in records if r.status in BAD]
    if bad:
        lines += ["", f"failing cases ({len(bad)})"]
        for r in bad[:MAX_LISTED]:
            lines += ["  " + _fit(f"{r.status.upper()} {case_label(r.case, backend=True)}", width - 2)]
            lines += _wrap(r.reason or "(no reason recorded)", width, "      ")
        if len(bad) > MAX_LISTED:
            lines += _wrap(f"... and {len(bad) - MAX_LISTED} more: harness report {facts.out_path}", width, "  ")
    invalid = left_out(records)
    if invalid:
        lines += ["", *_wrap(f"speed ratios: {invalid}", width, "")]
    noisy = [t for r in records if (t := valid_timing(r)) is not None and t.noisy]
    if noisy:
        reasons = Counter("waited for a core" if "waited" in t.noise else "wide IQR" for t in noisy)
        why = ", ".join(f"{n} {what}" for what, n in reasons.most_common())
        lines += [
            "",
            *_wrap(
                f"noisy timings: {plural(len(noisy), 'case')} ({why}); compare ratios measured side by side, "
                "run with fewer jobs on the machine, or raise --time-budget",
                width,
                "",
            ),
        ]
    for verdict in port_verdicts(records, facts.against, facts.against_ratio):
        lines += ["", *_port_block(verdict, width)]
    lines += ["", *_wrap(final_line(records, facts).rstrip("\n"), width, "")]
    lines += _wrap(f"all cases, one row each: harness report {facts.out_path}", width, "")
    return "\n".join(lines) + "\n"


def final_line(records: list[Record], facts: RunFacts) -> str:
    """`2025 cases (575 passed, 1450 skipped); results: FILE`."""
    counts = Counter(r.status for r in records)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"{plural(len(records), 'case')} ({summary}); results: {facts.out_path}\n"


def brief(records: list[Record], facts: RunFacts) -> str:
    """What --no-table prints: each --against port verdict's headline (`PORT OK  ascend-sim against torch-cpu;
    8 of 40 cases not judged`), so the verdict is never left out, then the final line."""
    ports = "".join(f"{v.headline()}\n" for v in port_verdicts(records, facts.against, facts.against_ratio))
    return ports + final_line(records, facts)


def _strict(value: Any) -> Any:
    """JSON has no infinity or NaN that every parser reads: those become null, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _status_verdict(counts: Mapping[str, int]) -> str:
    if counts.get("failed"):
        return "failed"
    if any(counts.get(s) for s in BAD[1:]):
        return "error"
    return "passed" if counts.get("passed") else "skipped"


@dataclass(frozen=True)
class RunSummary:
    """The summary as data (`harness run --summary-format json`, for CI bots): per backend its counts, verdict,
    worst case and, with --against, its port verdict; the failing cases in full; the results file."""

    records: tuple[Record, ...]
    facts: RunFacts
    exit_code: int
    notes: tuple[str, ...] = ()  # why the exit code is what it is beyond the records (nothing tested, unsaved)

    def backend(self, name: str, records: list[Record], port: PortVerdict | None) -> dict[str, Any]:
        counts = Counter(r.status for r in records)
        found = worst_case(records)
        worst = None
        if found is not None:
            r, w = found
            worst = {
                "case": r.case.key,
                "status": r.status,
                "metric": w.metric,
                "value": w.value,
                "budget": w.budget,
                "share_of_budget": w.ratio,
                "detail": w.detail,
                "divergence": divergence(r),
            }
        port_data = None if port is None else port.to_dict()
        not_invariant, checked, diff = invariance.tally(records)
        fmts = format_errors(records)
        return (
            {"backend": name, "verdict": _status_verdict(counts), "counts": dict(counts), "worst": worst}
            | ({"port": port_data} if self.facts.against is not None else {})
            | ({"formats": {f: {"kernel_rel_l2": k, "format_rel_l2": e} for f, (k, e) in fmts.items()}} if fmts else {})
            | (
                {"invariance": {"checked": checked, "not_invariant": not_invariant, "max_abs_diff": diff}}
                if checked
                else {}
            )
        )

    def to_dict(self) -> dict[str, Any]:
        facts = self.facts
        unavailable = dict(facts.unavailable or {})
        by_backend: dict[str, list[Record]] = {}
        for r in self.records:
            by_backend.setdefault(r.case.backend, []).append(r)
        ports = {v.backend: v for v in port_verdicts(self.records, facts.against, facts.against_ratio)}
        return _strict(
            {
                "suite": facts.suite,
                "results": facts.out_path,
                "exit_code": self.exit_code,
                "notes": list(self.notes),
                "seconds": round(facts.seconds, 3),
                "cases": len(self.records),
                "counts": dict(Counter(r.status for r in self.records)),
                "against": facts.against,
                "against_ratio": facts.against_ratio if facts.against is not None else None,
                "backends": [
                    self.backend(b, recs, ports.get(b)) for b, recs in by_backend.items() if b not in unavailable
                ],
                "unavailable": unavailable,
                "invalid_timings": [
                    {"case": r.case.key, "reason": why} for r in self.records if (why := invalid_reason(r))
                ],
                "failing": [
                    {"case": r.case.key, "status": r.status, "reason": r.reason}
                    for r in self.records
                    if r.status in BAD
                ],
            }
        )

    def to_json(self) -> str:
        """One JSON object on one line (strict JSON: no NaN or Infinity)."""
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")) + "\n"
