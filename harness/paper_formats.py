"""The paper table model (harness.paper_table) written as LaTeX (booktabs), Markdown or CSV.

Numbers are plain fixed-decimal figures (no scientific notation in latency; siunitx `S` columns can align them);
units sit in the headers (latency) or beside the figure (throughput, whose unit is the one that bounds the row).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from harness.paper_table import (
    ERROR_MARK,
    FAIL_MARK,
    PASS_MARK,
    Cell,
    PaperTable,
    TableRow,
    worst_errors,
    worst_format_errors,
)
from harness.report_formats import latex_escape

LATEX_MARKS = {PASS_MARK: r"$\surd$", FAIL_MARK: r"$\otimes$", ERROR_MARK: "!"}
TEXT_MARKS = {PASS_MARK: "✓", FAIL_MARK: "✗", ERROR_MARK: "!"}
SUBCOLUMNS = ("latency", "throughput", "speedup")


def _figure(value: float) -> str:
    """Three significant digits without exponent: 585, 41.2, 3.10."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}" if abs(value) >= 1e-3 else "<0.001"


def _subcolumns(table: PaperTable, backend: str) -> list[str]:
    """The backend's sub-columns that hold something on some row (an all-empty column is left out)."""
    cells = [r.cells[backend] for r in table.rows if backend in r.cells]
    has = {
        "latency": True,
        "throughput": any(c.throughput is not None for c in cells),
        "speedup": any(c.speedup is not None for c in cells),
    }
    return [s for s in SUBCOLUMNS if has[s]]


def _label_columns(table: PaperTable) -> list[tuple[str, Callable[[TableRow], str]]]:
    cols: list[tuple[str, Callable[[TableRow], str]]] = [
        ("Workload", lambda r: r.workload),
        ("Shape", lambda r: r.shape),
    ]
    if len({r.preset for r in table.rows}) > 1:
        cols.append(("Preset", lambda r: r.preset))
    if len({r.dtype for r in table.rows}) > 1:
        cols.append(("dtype", lambda r: r.dtype))
    return cols


def _cell_text(table: PaperTable, cell: Cell | None, sub: str, bold: Callable[[str], str], pct: str = "%") -> str:
    """One sub-column of a cell, without marks (the writers add them)."""
    if cell is None:
        return "--"
    if sub == "latency":
        if cell.invalid:
            return "invalid"
        if cell.median is None:
            return "--" if cell.verdict else "n/a"
        d = table.decimals
        text = bold(f"{cell.median:.{d}f}")
        return text + (f" [{cell.low:.{d}f}, {cell.high:.{d}f}]" if cell.low is not None else "")
    if cell.invalid:
        return "invalid"
    if sub == "throughput" and cell.throughput is not None:
        roof = f" ({cell.roofline_pct:.0f}{pct})" if cell.roofline_pct is not None else ""
        return f"{_figure(cell.throughput)} {cell.throughput_unit}{roof}"
    if sub == "speedup" and cell.speedup is not None:
        return f"{cell.speedup:.2f}"
    return "--"


def unit_text(unit: str, latex: bool) -> str:
    """us in LaTeX is the micro sign in math mode; ms stays ms."""
    return r"$\mu$s" if latex and unit == "us" else unit


def _headers(table: PaperTable, backend: str, latex: bool) -> dict[str, str]:
    pct = r"\%" if latex else "%"
    speedup = f"vs {table.baseline}"
    return {
        "latency": f"{unit_text(table.unit, latex)} [95{pct} CI]",
        "throughput": f"throughput ({pct} roof)" if table.calibrated else "throughput",
        "speedup": latex_escape(speedup) + r" ($\times$)" if latex else f"{speedup} (x)",
    }


def _notes(table: PaperTable, marks: dict[str, str], latex: bool) -> list[str]:
    esc = latex_escape if latex else (lambda s: s)
    worst = worst_errors(table)
    parts = [f"{b} {e:.2e} ({r.workload} {r.shape})" for b, (e, r) in worst.items() if b in table.backends]
    notes = [
        f"{marks[PASS_MARK]} parity passed on every case, {marks[FAIL_MARK]} failed, {marks[ERROR_MARK]} errored "
        + esc("(judged against the float64 reference within the dtype's budget); worst rel_l2: ")
        + esc(", ".join(parts) or "none")
        + "."
    ]
    fmt_worst = [(b, e, r) for b, (e, r) in worst_format_errors(table).items() if b in table.backends]
    if fmt_worst:  # quantized rows: the kernel's error (above, against the format's emulation) and the format's
        parts = ", ".join(f"{b} {e:.2e} ({r.workload} {r.shape} {r.dtype})" for b, e, r in fmt_worst)
        notes.append(
            esc(
                "Quantized formats (w8a8, fp8...): rel_l2 above is the kernel's error against the float64 emulation "
                "of the format; the format's own error against the unquantized float64 function (informative), "
                f"worst per backend: {parts}."
            )
        )
    if any(c.bold for r in table.rows for c in r.cells.values()):
        notes.append(
            ("Bold" if latex else "**Bold**")
            + esc(": the 95% CI of the median lies wholly below every other backend's on the row.")
        )
    if table.left_out:
        notes.append(esc("Not in the table (skipped on every row): " + "; ".join(table.left_out) + "."))
    return notes


def _footnote_marks(table: PaperTable) -> tuple[dict[tuple[int, str], int], list[str]]:
    """Numbered footnotes for invalid timings, review marks and skips: (row index, backend) -> number, texts."""
    numbers: dict[str, int] = {}
    where: dict[tuple[int, str], int] = {}
    for i, row in enumerate(table.rows):
        for backend, cell in row.cells.items():
            if cell.invalid:
                text = f"{backend}: timing invalid: {cell.invalid}"
            else:
                text = f"{backend}: {cell.review}" if cell.review else cell.skip and f"{backend}: {cell.skip}"
            if text:
                where[(i, backend)] = numbers.setdefault(text, len(numbers) + 1)
    return where, list(numbers)


def to_latex(tables: list[PaperTable], *, caption: str = "Latency, throughput and parity per backend.") -> str:
    """One booktabs table per kind of shape; requires booktabs (siunitx optional)."""
    out = [r"% requires \usepackage{booktabs}; figures are fixed-decimal, so siunitx S columns can align them"]
    for table in tables:
        labels = _label_columns(table)
        subs = {b: _subcolumns(table, b) for b in table.backends}
        spec = "l" * len(labels) + "r" * len(table.dim_labels) + "".join("r" * len(s) for s in subs.values())
        first = len(labels) + len(table.dim_labels) + 1
        group, rules = [""] * (first - 1), []
        for b in table.backends:
            n = len(subs[b])
            group.append(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(b)}}}")
            rules.append(rf"\cmidrule(lr){{{first}-{first + n - 1}}}")
            first += n
        head = [name for name, _ in labels] + [latex_escape(d) for d in table.dim_labels]
        for b in table.backends:
            names = _headers(table, b, latex=True)
            head += [names[s] for s in subs[b]]
        where, footnotes = _footnote_marks(table)
        lines = [
            r"\begin{table}[t]",
            r"\centering\small",
            rf"\caption{{{latex_escape(caption)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(group) + r" \\",
            " ".join(rules),
            " & ".join(head) + r" \\",
            r"\midrule",
        ]
        for i, row in enumerate(table.rows):
            cells = [latex_escape(get(row)) for _, get in labels] + list(row.dims)
            for b in table.backends:
                cell = row.cells.get(b)
                for s in subs[b]:
                    text = _cell_text(
                        table, cell, s, lambda t, c=cell: rf"\textbf{{{t}}}" if c and c.bold else t, r"\%"
                    )
                    if s == "latency" and cell is not None:
                        text += f"~{LATEX_MARKS[cell.verdict]}" if cell.verdict else ""
                        text += f"$^{{{where[(i, b)]}}}$" if (i, b) in where else ""
                    cells.append(text)
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        notes = _notes(table, LATEX_MARKS, latex=True)
        notes += [rf"$^{{{n}}}$ {latex_escape(t)}" for n, t in enumerate(footnotes, 1)]
        lines += [r"\par\footnotesize " + note for note in notes]
        lines.append(r"\end{table}")
        out += lines
    return "\n".join(out) + "\n"


def to_markdown(tables: list[PaperTable]) -> str:
    out = []
    for table in tables:
        labels = _label_columns(table)
        subs = {b: _subcolumns(table, b) for b in table.backends}
        head = [name for name, _ in labels] + list(table.dim_labels)
        for b in table.backends:
            names = _headers(table, b, latex=False)
            head += [f"{b} {names[s]}" for s in subs[b]]
        where, footnotes = _footnote_marks(table)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, row in enumerate(table.rows):
            cells = [get(row) for _, get in labels] + list(row.dims)
            for b in table.backends:
                cell = row.cells.get(b)
                for s in subs[b]:
                    text = _cell_text(table, cell, s, lambda t, c=cell: f"**{t}**" if c and c.bold else t)
                    if s == "latency" and cell is not None:
                        text += f" {TEXT_MARKS[cell.verdict]}" if cell.verdict else ""
                        text += f" [^{where[(i, b)]}]" if (i, b) in where else ""
                    cells.append(text.replace("|", "\\|"))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_notes(table, TEXT_MARKS, latex=False)]
        lines += [f"[^{n}]: {t}" for n, t in enumerate(footnotes, 1)]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


CSV_FIELDS = (
    "workload", "preset", "shape", "dtype", "dims", "backend", "unit", "median", "ci95_low", "ci95_high",
    "throughput", "throughput_unit", "roofline_pct", "speedup", "baseline", "best", "verdict", "rel_l2",
    "timing_invalid", "skip", "format_rel_l2",
)  # fmt: skip


def to_csv(tables: list[PaperTable]) -> str:
    """Long form: one line per row and backend (dims as `B=1 Hq/Hkv=32/8 ...`), the same figures as the tables."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for table in tables:
        for row in table.rows:
            dims = " ".join(f"{k}={v}" for k, v in zip(table.dim_labels, row.dims, strict=True) if v)
            for backend in table.backends:
                c = row.cells.get(backend)
                if c is None:
                    continue
                values = [row.workload, row.preset, row.shape, row.dtype, dims, backend, table.unit]
                values += [c.median, c.low, c.high, c.throughput, c.throughput_unit, c.roofline_pct, c.speedup]
                values += [table.baseline, c.bold, c.verdict, c.rel_l2, c.invalid, c.skip, c.format_rel_l2]
                writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()
