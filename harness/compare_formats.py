"""The ratio table of `harness compare` (harness.compare.CaseRatio, one row per case timed in both runs) written
as Markdown (the CI comment), LaTeX booktabs (papers comparing two systems) or CSV.

Rows are grouped by workload; latencies share one unit per table with fixed decimals (harness.paper_table's
choice), ratios are NEW/OLD with three decimals and their 95% CI. A change is marked (bold, and the word or an
arrow) only where compare judged it significant: the CI lies wholly beyond the noise threshold AND the rank test
agrees; a large point ratio inside a wide interval is not marked. Invalid timings are never ranked: they are
listed apart under the table with their reason.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable

from harness.compare import CaseRatio, Comparison
from harness.paper_formats import unit_text
from harness.paper_table import latency_unit
from harness.report_formats import latex_escape

ARROWS = {"slower": r"$\uparrow$", "faster": r"$\downarrow$"}


def ranked(comparison: Comparison) -> list[CaseRatio]:
    """The cases with a valid ratio, grouped by workload (then backend and case)."""
    rows = [r for r in comparison.ratios if not r.invalid and r.ratio is not None]
    return sorted(rows, key=lambda r: (r.workload, r.backend, r.label))


def not_ranked(comparison: Comparison) -> list[CaseRatio]:
    return [r for r in comparison.ratios if r.invalid]


def geomeans(rows: list[CaseRatio]) -> dict[str, float]:
    """Per backend, the geometric mean of NEW/OLD over its ranked cases."""
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r.backend, []).append(math.log(r.ratio))  # type: ignore[arg-type]
    return {b: math.exp(sum(v) / len(v)) for b, v in sorted(out.items())}


def _ratio_text(r: CaseRatio, bold: Callable[[str], str]) -> str:
    text = f"{r.ratio:.3f}"
    text = bold(text) if r.change else text
    return text + (f" [{r.low:.3f}, {r.high:.3f}]" if r.low is not None else " [no CI]")


def _significance_note(comparison: Comparison, latex: bool) -> str:
    pct = r"\%" if latex else "%"
    threshold = f"{comparison.fail_on * 100:g}{pct}"
    return (
        f"{'Bold' if latex else '**Bold**'}: a significant change, the 95{pct} CI of the ratio wholly beyond "
        f"{threshold} of 1 and the Mann-Whitney test at "
        + (f"$p < {comparison.alpha:g}$" if latex else f"p < {comparison.alpha:g}")
        + (r" ($\uparrow$ slower, $\downarrow$ faster)." if latex else ".")
    )


def _invalid_lines(comparison: Comparison) -> list[str]:
    return [f"{r.workload} {r.label} {r.backend}: {r.invalid}" for r in not_ranked(comparison)]


def ratio_markdown(comparison: Comparison) -> str:
    """The per-case ratio table (always, whether or not anything changed), its notes and the invalid timings."""
    rows = ranked(comparison)
    old, new = comparison.labels
    lines = ["### Speed, NEW/OLD per case", ""]
    if not rows:
        lines.append("No case was timed validly in both runs.")
    else:
        unit, d = latency_unit([r.old_ns for r in rows] + [r.new_ns for r in rows])  # type: ignore[misc]
        scale = 1e6 if unit == "ms" else 1e3
        lines += [
            f"| workload | case | backend | {old} {unit} | {new} {unit} | {new}/{old} [95% CI] | change |",
            "|---|---|---|---:|---:|---|---|",
        ]
        previous = None
        for r in rows:
            workload = r.workload if r.workload != previous else ""
            previous = r.workload
            lines.append(
                f"| {workload} | {r.label} | {r.backend} | {r.old_ns / scale:.{d}f} | {r.new_ns / scale:.{d}f} | "  # type: ignore[operator]
                f"{_ratio_text(r, lambda t: f'**{t}**')} | {r.change or '-'} |"
            )
        means = ", ".join(f"{b} {g:.3f}" for b, g in geomeans(rows).items())
        lines += ["", f"Geometric mean {new}/{old}: {means}.", _significance_note(comparison, latex=False)]
    if bad := _invalid_lines(comparison):
        lines += ["", f"Not ranked (invalid timing, {len(bad)}):", *(f"- {line}" for line in bad)]
    return "\n".join(lines) + "\n\n"


def to_latex(comparison: Comparison, *, caption: str = "") -> str:
    """A booktabs table: a block per workload, both medians in one unit, the ratio with its 95% CI, significant
    changes in bold with an arrow; geometric means per backend, and invalid timings in a note."""
    rows = ranked(comparison)
    old, new = (latex_escape(x) for x in comparison.labels)
    caption = caption or f"Latency of {comparison.labels[1]} against {comparison.labels[0]} per case."
    out = [
        r"% requires \usepackage{booktabs}; figures are fixed-decimal, so siunitx S columns can align them",
        r"\begin{table}[t]",
        r"\centering\small",
        rf"\caption{{{latex_escape(caption)}}}",
        r"\begin{tabular}{lllrrl}",
        r"\toprule",
    ]
    unit, d = latency_unit([r.old_ns for r in rows] + [r.new_ns for r in rows])  # type: ignore[misc]
    scale = 1e6 if unit == "ms" else 1e3
    u = unit_text(unit, latex=True)
    out.append(rf"Workload & Case & Backend & {old} ({u}) & {new} ({u}) & {new}/{old} [95\% CI] \\")
    previous = None
    for r in rows:
        if r.workload != previous:
            out.append(r"\midrule")
        ratio = _ratio_text(r, lambda t: rf"\textbf{{{t}}}") + (f"~{ARROWS[r.change]}" if r.change else "")
        cells = [latex_escape(r.workload) if r.workload != previous else "", latex_escape(r.label)]
        cells += [latex_escape(r.backend), f"{r.old_ns / scale:.{d}f}", f"{r.new_ns / scale:.{d}f}", ratio]  # type: ignore[operator]
        out.append(" & ".join(cells) + r" \\")
        previous = r.workload
    if not rows:
        out += [r"\midrule", r"\multicolumn{6}{c}{no case timed validly in both runs} \\"]
    out += [r"\bottomrule", r"\end{tabular}"]
    notes = [_significance_note(comparison, latex=True)]
    if rows:
        means = ", ".join(f"{b} {g:.3f}" for b, g in geomeans(rows).items())
        notes.append(latex_escape(f"Geometric mean {comparison.labels[1]}/{comparison.labels[0]}: {means}."))
    if bad := _invalid_lines(comparison):
        notes.append(latex_escape(f"Not ranked (invalid timing): {'; '.join(bad)}."))
    out += [r"\par\footnotesize " + n for n in notes]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


CSV_FIELDS = (
    "key", "workload", "case", "backend", "old", "new", "old_median_ns", "new_median_ns", "ratio", "ci95_low",
    "ci95_high", "p", "change", "timing_invalid",
)  # fmt: skip


def to_csv(comparison: Comparison) -> str:
    """One line per case timed in both runs, invalid timings included (with their reason, no ratio)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in [*ranked(comparison), *not_ranked(comparison)]:
        values = [r.key, r.workload, r.label, r.backend, *comparison.labels, r.old_ns, r.new_ns]
        values += [r.ratio, r.low, r.high, r.p, r.change, r.invalid]
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def to_markdown(comparison: Comparison) -> str:
    """compare's Markdown summary with the ratio table in it."""
    return comparison.markdown(ratio_markdown(comparison))


WRITERS: dict[str, Callable[[Comparison], str]] = {"md": to_markdown, "latex": to_latex, "csv": to_csv}
