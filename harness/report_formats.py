"""The LaTeX writer of `harness report` (HTML: harness.report_html; Markdown and CSV: harness.report; the rows:
harness.report_rows).

An invalid timing shows a marker with a footnote that gives its reason; an implausible speedup one that asks for
review (harness.timing_view).
"""

from __future__ import annotations

from collections.abc import Callable

from harness.report_rows import (
    Row,
    against_caption,
    geomean_speedups,
    judged_against,
    left_out,
    speedups,
)
from harness.results import Record

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(rows: list[Row], *, baseline: str | None = None, caption: str = "Parity and speed per backend.") -> str:
    """A booktabs table: median latency with its 95% CI, best per case in bold, speedup against `baseline`
    and a geometric-mean row per backend."""
    speed = speedups(rows, baseline)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.workload, r.preset, r.shape, r.dtype), []).append(i)

    def best(indices: list[int], value: Callable[[Row], float | None], low: bool) -> int | None:
        scored = [(value(rows[i]), i) for i in indices if value(rows[i]) is not None]
        if len(scored) < 2:
            return None
        return (min(scored) if low else max(scored))[1]

    bold: set[tuple[int, str]] = set()
    for indices in groups.values():
        for column, value, low in (
            ("median", lambda r: r.median_us, True),
            ("tflops", lambda r: r.tflops, False),
            ("rel_l2", lambda r: r.rel_l2, True),
        ):
            winner = best(indices, value, low)
            if winner is not None:
                bold.add((winner, column))

    def cell(i: int, column: str, text: str) -> str:
        return rf"\textbf{{{text}}}" if (i, column) in bold else text

    against = bool(judged_against(rows))
    if against:
        caption = f"{caption} {against_caption(rows)}"
    cols = ["Case", "dtype", "Backend", "Verdict", r"rel\_l2", r"Median $\mu$s [95\% CI]", "TFLOP/s"]
    if against:
        cols[5:5] = [r"Baseline rel\_l2", "Ratio"]
    if baseline:
        cols.append(f"Speedup vs {latex_escape(baseline)}")
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        r"\begin{tabular}{lll" + "l" + "r" * (len(cols) - 4) + "}",
        r"\toprule",
        " & ".join(cols) + r" \\",
        r"\midrule",
    ]
    footnotes: dict[str, int] = {}  # note text -> its number, in order of first use

    def mark(text: str) -> str:
        return f"$^{{{footnotes.setdefault(text, len(footnotes) + 1)}}}$"

    for i, r in enumerate(rows):
        median = "--" if r.median_us is None else f"{r.median_us:.4g}"
        if r.median_us is not None and r.ci95_low_us is not None:
            median += f" [{r.ci95_low_us:.4g}, {r.ci95_high_us:.4g}]"
        if r.timing_invalid:
            median = "invalid" + mark(f"{r.backend}: timing invalid: {r.timing_invalid}")
        elif r.review:
            median += mark(f"{r.backend}: {r.review}")
        cells = [
            latex_escape(f"{r.workload} {r.preset}/{r.shape}"),
            latex_escape(r.dtype),
            latex_escape(r.backend + (" (sim.)" if "simulated" in r.note else "")),
            latex_escape(r.verdict),
            cell(i, "rel_l2", "--" if r.rel_l2 is None else f"{r.rel_l2:.2e}"),
            cell(i, "median", median),
            cell(i, "tflops", "--" if r.tflops is None else f"{r.tflops:.3g}"),
        ]
        if against:
            base, ratio = r.baseline_rel_l2, r.error_ratio
            cells[5:5] = ["--" if base is None else f"{base:.2e}", "--" if ratio is None else f"{ratio:.3g}$\\times$"]
        if baseline:
            cells.append("--" if i not in speed else f"{speed[i]:.2f}$\\times$")
        lines.append(" & ".join(cells) + r" \\")
    if baseline and speed:
        lines.append(r"\midrule")
        for backend, geo in geomean_speedups(rows, baseline).items():
            blank = [""] * (len(cols) - 4)
            lines.append(
                " & ".join(["Geometric mean", "", latex_escape(backend), *blank, f"{geo:.2f}$\\times$"]) + r" \\"
            )
    lines += [r"\bottomrule", r"\end{tabular}"]
    if baseline and left_out(rows):
        lines.append(r"\par\footnotesize " + latex_escape(f"Geometric means:{left_out(rows)}."))
    for text, number in footnotes.items():
        lines.append(rf"\par\footnotesize $^{{{number}}}$ {latex_escape(text)}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(
    records: list[Record], rows: list[Row], *, title: str = "harness report", baseline: str | None = None
) -> str:
    """One self-contained page (harness.report_html): summary, inline plots, filterable rows."""
    from harness import report_html

    return report_html.to_html(records, rows, title=title, baseline=baseline)
