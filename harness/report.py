"""`harness report`: the rows (harness.report_rows) written as Markdown or CSV here, as LaTeX or HTML by
harness.report_formats; `render` picks the writer, `check_baseline` checks --baseline against the records.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, fields

from harness import report_formats
from harness.names import REPORT_FORMATS, BadInputError
from harness.report_rows import (
    AGAINST_FIELDS,
    Row,
    against_caption,
    geomean_speedups,
    judged_against,
    layerwise_section,
    left_out,
    speedups,
    summarize,
    table,
)
from harness.results import Record

FORMATS = REPORT_FORMATS
__all__ = ["FORMATS", "ReportError", "Row", "check_baseline", "render", "summarize", "to_csv", "to_markdown"]


def skip_note(rows: list[Row]) -> str:
    """One line for the rows that only skipped (they stay out of the Markdown table): how many, per backend, and
    the commonest reasons; "" when none."""
    skipped = [r for r in rows if r.verdict == "skip"]
    if not skipped:
        return ""
    per_backend = Counter(r.backend for r in skipped).most_common()
    reasons = Counter(r.note or "no reason given" for r in skipped).most_common(3)
    return (
        f"{len(skipped)} skipped rows not shown ({', '.join(f'{b} {n}' for b, n in per_backend)}); commonest "
        "reasons: " + "; ".join(f"{why} ({n})" for why, n in reasons) + "."
    )


def to_markdown(rows: list[Row], *, baseline: str | None = None) -> str:
    """The table without the rows that only skipped (summarized in one note under it: a smoke run's report is
    otherwise mostly skip rows)."""
    shown = [r for r in rows if r.verdict != "skip"]
    header, cells = table(shown, baseline)
    caption = against_caption(rows)
    lines = [caption, ""] if caption else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_cells in cells:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells) + " |")
    if note := skip_note(rows):
        lines += ["", note]
    if baseline is not None:
        means = ", ".join(f"{b} {g:.2f}x" for b, g in geomean_speedups(shown, baseline).items())
        lines += ["", f"Geometric mean speedup vs {baseline}: {means or '-'}{left_out(shown)}"]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], *, baseline: str | None = None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = [f.name for f in fields(Row) if judged_against(rows) or f.name not in AGAINST_FIELDS]
    writer.writerow(names + ([f"speedup_vs_{baseline}"] if baseline is not None else []))
    speed = speedups(rows, baseline)
    for i, row in enumerate(rows):
        values = asdict(row)
        extra = [speed.get(i, "")] if baseline is not None else []
        writer.writerow(["" if values[n] is None else values[n] for n in names] + extra)
    return buf.getvalue()


class ReportError(BadInputError):
    """A report option that does not fit the records it reports on (--baseline)."""


def check_baseline(records: list[Record], baseline: str, *, include_simulated_speed: bool = False) -> None:
    """--baseline must name a backend the files hold, with timings to divide by (every format shows them)."""
    backends = sorted({r.case.backend for r in records})
    if baseline not in backends:
        raise ReportError(
            f"--baseline {baseline!r}: no records of that backend in the files; they hold: {', '.join(backends)}"
        )
    rows = summarize(records, include_simulated_speed=include_simulated_speed)
    if not any(r.backend == baseline and r.median_us for r in rows):
        raise ReportError(
            f"--baseline {baseline!r}: none of its records is timed (a --parity-only run, stress inputs only, or a "
            "simulated backend without --include-simulated-speed); speedups need the baseline's timings"
        )


def render(
    records: Iterable[Record],
    fmt_name: str,
    *,
    include_simulated_speed: bool = False,
    baseline: str | None = None,
    table: str | None = None,
) -> str:
    """`table`: "paper" (harness.paper_table: a row per case, a column per backend) or "rows" (a row per backend
    and case, every field); None picks paper for latex, rows for the others."""
    records = list(records)
    if (table or ("paper" if fmt_name == "latex" else "rows")) == "paper" and fmt_name != "html":
        from harness import paper_formats
        from harness.paper_table import build_tables

        tables = build_tables(records, baseline=baseline, include_simulated_speed=include_simulated_speed)
        writer = {"md": paper_formats.to_markdown, "csv": paper_formats.to_csv, "latex": paper_formats.to_latex}
        return writer[fmt_name](tables)
    rows = summarize(records, include_simulated_speed=include_simulated_speed, baseline=baseline)
    if fmt_name == "md":
        return to_markdown(rows, baseline=baseline) + layerwise_section(records)
    if fmt_name == "csv":
        return to_csv(rows, baseline=baseline)
    if fmt_name == "latex":
        return report_formats.to_latex(rows, baseline=baseline)  # --table rows
    if fmt_name == "html":
        from harness import report_html

        return report_html.to_html(records, rows, baseline=baseline, include_simulated_speed=include_simulated_speed)
    raise ValueError(f"report format {fmt_name!r} is not one of: {', '.join(FORMATS)}")
