"""`harness report`: the rows (harness.report_rows) written as Markdown or CSV here, as LaTeX or HTML by
harness.report_formats; `render` picks the writer, `check_baseline` checks --baseline against the records.
"""

from __future__ import annotations

import csv
import io
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


def to_markdown(rows: list[Row], *, baseline: str | None = None) -> str:
    header, cells = table(rows, baseline)
    caption = against_caption(rows)
    lines = [caption, ""] if caption else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row_cells in cells:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells) + " |")
    if baseline is not None:
        means = ", ".join(f"{b} {g:.2f}x" for b, g in geomean_speedups(rows, baseline).items())
        lines += ["", f"Geometric mean speedup vs {baseline}: {means or '-'}{left_out(rows)}"]
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
) -> str:
    records = list(records)
    rows = summarize(records, include_simulated_speed=include_simulated_speed, baseline=baseline)
    if fmt_name == "md":
        return to_markdown(rows, baseline=baseline) + layerwise_section(records)
    if fmt_name == "csv":
        return to_csv(rows, baseline=baseline)
    if fmt_name == "latex":
        return report_formats.to_latex(rows, baseline=baseline)
    if fmt_name == "html":
        return report_formats.to_html(records, rows, baseline=baseline)
    raise ValueError(f"report format {fmt_name!r} is not one of: {', '.join(FORMATS)}")
