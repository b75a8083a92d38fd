"""The paper table model: one row per workload and shape (its dimensions spelled out), one column per backend.

Every paper format (LaTeX, Markdown, CSV: harness.paper_formats) renders this one model, so they cannot disagree.
A cell holds the median latency in the table's unit with its 95% CI, the throughput that bounds the case
(TFLOP/s when compute-bound, TB/s when memory-bound, as the calibrated roofline says; TFLOP/s without one) and the
share of the roofline, the speedup against a baseline backend, and the parity verdict as a mark. A cell is bold
only where its CI lies wholly below every other backend's on the row: a median that wins within noise is not a
win. Backends with nothing but skips in a table are left out of it and named in one note. Invalid timings are
never ranked (harness.timing_view): such a cell shows the reason, never a figure.

Dimensions come from the shape the record was made with (`Record.shape_dims`, the shape dataclass's fields), not
from parsing shape names, through DIM_COLUMNS: the core knows dimension names, not model families.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from harness.quant_parity import FORMAT_ERROR
from harness.results import Record
from harness.timing_view import (
    device_class,
    eager_references,
    invalid_reason,
    pick_reference,
    review_notice,
    valid_timing,
)

# (column label, the shape fields it shows): the first matching entry of each label wins; "a/b" joins two fields.
DIM_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("checkpoint",)),
    ("model", ("arch",)),
    ("B", ("b",)),
    ("B", ("batch",)),
    ("Hq/Hkv", ("hq", "hkv")),
    ("Sq/Skv", ("sq", "skv")),
    ("S", ("seq",)),
    ("D", ("d",)),
    ("Dv", ("dv",)),
    ("W", ("window",)),
    ("block", ("block_size",)),
    ("T", ("t",)),
    ("H", ("h",)),
    ("F", ("f",)),
    ("E", ("e",)),
    ("k", ("top_k",)),
    ("K", ("k",)),  # a projection's reduction and output features (linear.projection)
    ("N", ("n",)),
)
PASS_MARK, FAIL_MARK, ERROR_MARK = "ok", "FAIL", "ERR"  # writers turn them into symbols


@dataclass(frozen=True)
class Cell:
    """One backend on one row. Latency figures are in the table's unit; None where not validly timed."""

    verdict: str  # PASS_MARK | FAIL_MARK | ERROR_MARK | "" (skipped)
    rel_l2: float | None  # the worst over the row's cases
    median: float | None = None
    low: float | None = None
    high: float | None = None
    throughput: float | None = None
    throughput_unit: str = ""  # TFLOP/s | TB/s
    roofline_pct: float | None = None
    speedup: float | None = None  # baseline median / this median
    bold: bool = False
    invalid: str = ""  # why the timing is invalid: no figure is shown
    skip: str = ""  # why the backend skipped this row
    review: str = ""  # an implausible speedup against the case's reference backend (timing_view.review_notice)
    format_rel_l2: float | None = None  # quantized formats: the worst rel_l2 against the unquantized function


@dataclass(frozen=True)
class TableRow:
    workload: str
    preset: str
    shape: str
    dtype: str
    dims: tuple[str, ...]  # values of the table's dim columns ("" where the shape has none)
    cells: Mapping[str, Cell]  # backend -> cell; a backend absent here did not run the row


@dataclass(frozen=True)
class PaperTable:
    dim_labels: tuple[str, ...]
    backends: tuple[str, ...]
    unit: str  # us | ms
    decimals: int
    rows: tuple[TableRow, ...]
    baseline: str | None
    left_out: tuple[str, ...]  # `backend (reason)` of backends with only skips in this table

    @property
    def calibrated(self) -> bool:
        """Whether some cell has a share of the calibrated roofline."""
        return any(c.roofline_pct is not None for r in self.rows for c in r.cells.values())


def dimensions(dims: Mapping[str, Any] | None) -> dict[str, str]:
    """Column label -> value text of one shape (nested dataclasses such as a MoE shape's `dims` flattened)."""
    if not dims:
        return {}
    flat = dict(dims)
    for value in dims.values():
        if isinstance(value, Mapping):
            flat = {**value, **flat}
    out: dict[str, str] = {}
    for label, keys in DIM_COLUMNS:
        values = [flat.get(k) for k in keys]
        if label in out or any(v is None or isinstance(v, Mapping | list | bool) for v in values):
            continue
        if label == "Dv" and values[0] == flat.get("d"):
            continue  # Dv only where it differs from D
        out[label] = "/".join(str(v) for v in values)
    return out


def _verdict(statuses: list[str]) -> str:
    if any(s in ("error", "crashed", "timeout") for s in statuses):
        return ERROR_MARK
    if "failed" in statuses:
        return FAIL_MARK
    return PASS_MARK if "passed" in statuses else ""


def _bound(record: Record) -> str:
    timing = record.timing
    roof = timing.roofline if timing is not None else {}
    return "memory" if roof.get("bound") == "memory" else "compute"


@dataclass(frozen=True)
class _Timed:
    median_ns: float
    low_ns: float | None
    high_ns: float | None
    throughput: float | None
    unit: str
    roofline_pct: float | None


def _timed(recs: list[Record], include_simulated: bool) -> _Timed | None:
    """The row's latency over its validly timed cases (the CI only where one case makes it)."""
    timed = [(r, t) for r in recs if (t := valid_timing(r)) is not None and (include_simulated or not r.simulated)]
    if not timed:
        return None
    median = statistics.median(t.median_ns for _, t in timed)
    one = timed[0][1] if len(timed) == 1 else None
    memory = _bound(timed[0][0]) == "memory"
    values = [t.gbps / 1e3 if memory and t.gbps else t.tflops for _, t in timed]
    values = [v for v in values if v is not None]
    pcts = [p for _, t in timed if (p := t.roofline_pct) is not None]
    return _Timed(
        median,
        one.ci95_low_ns if one is not None else None,
        one.ci95_high_ns if one is not None else None,
        statistics.median(values) if values else None,
        ("TB/s" if memory else "TFLOP/s") if values else "",
        statistics.median(pcts) if pcts else None,
    )


def separated_best(intervals: Mapping[str, tuple[float, float | None, float | None]]) -> str | None:
    """The backend whose whole CI lies below every other's (backend -> (median, low, high)); None when the best
    median's interval overlaps another's, when an interval is missing, or when fewer than two compete."""
    if len(intervals) < 2:
        return None
    best = min(intervals, key=lambda b: intervals[b][0])
    high = intervals[best][2]
    if high is None:
        return None
    for backend, (_, low, _) in intervals.items():
        if backend != best and (low is None or not high < low):
            return None
    return best


def _unit(medians_ns: list[float]) -> tuple[str, int]:
    """us or ms for the table, and fixed decimals giving the smallest figure three significant digits (<= 3)."""
    if not medians_ns:
        return "us", 1
    unit_ns = 1e6 if statistics.median(medians_ns) >= 1e6 else 1e3
    smallest = min(medians_ns) / unit_ns
    digits = 2 - math.floor(math.log10(smallest)) if smallest > 0 else 1
    return ("ms" if unit_ns == 1e6 else "us"), max(0, min(3, digits))


latency_unit = _unit  # the same choice for other tables of latencies (harness.compare_formats)
OPTIONAL_DIMS = ("Dv", "W", "block")  # shown where some row has them; they do not split tables
LABELS = tuple(dict.fromkeys(label for label, _ in DIM_COLUMNS))


def _signature(dims: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(label for label in LABELS if label in dims and label not in OPTIONAL_DIMS)


def build_tables(
    records: Iterable[Record], *, baseline: str | None = None, include_simulated_speed: bool = False
) -> list[PaperTable]:
    """One table per kind of shape (the set of its dimension columns: attention, MoE, LLM...), in record order."""
    groups: dict[tuple[str, ...], dict[tuple[str, str, str, str], dict[str, list[Record]]]] = {}
    for r in records:
        c = r.case
        sig = _signature(dimensions(r.shape_dims))
        row = groups.setdefault(sig, {}).setdefault((c.workload, c.preset, c.shape, c.dtype), {})
        row.setdefault(c.backend, []).append(r)
    return [_table(sig, rows, baseline, include_simulated_speed) for sig, rows in groups.items()]


def _table(
    sig: tuple[str, ...],
    rows: dict[tuple[str, str, str, str], dict[str, list[Record]]],
    baseline: str | None,
    include_simulated: bool,
) -> PaperTable:
    shape_dims = {
        key: dimensions(next((r.shape_dims for rs in per.values() for r in rs if r.shape_dims), None))
        for key, per in rows.items()
    }
    present = {label for dims in shape_dims.values() for label in dims}
    sig = tuple(label for label in LABELS if label in sig or (label in OPTIONAL_DIMS and label in present))
    timed = {
        (key, b): t for key, per in rows.items() for b, recs in per.items() if (t := _timed(recs, include_simulated))
    }
    unit, decimals = _unit([t.median_ns for t in timed.values()])
    scale = 1e6 if unit == "ms" else 1e3
    ran: set[str] = set()  # backends with a verdict on some row
    skipped: dict[str, str] = {}  # backend -> its first skip reason
    out_rows = []
    for key, per in rows.items():
        cells: dict[str, Cell] = {}
        base = timed.get((key, baseline)) if baseline else None
        for backend, recs in per.items():
            verdict = _verdict([r.status for r in recs])
            reason = next((r.reason for r in recs if r.reason), "")
            if verdict:
                ran.add(backend)
            else:
                skipped.setdefault(backend, reason or "skipped")
            errors = [r.parity.metrics.rel_l2 for r in recs if r.parity is not None and r.parity.metrics is not None]
            t = timed.get((key, backend))
            invalid = next((why for r in recs if (why := invalid_reason(r))), "")
            fmt_errors = [f["rel_l2"] for r in recs if r.parity is not None and (f := r.parity.section(FORMAT_ERROR))]
            cell = Cell(verdict, max(errors) if errors else None, invalid=invalid, skip="" if verdict else reason)
            cell = replace(cell, format_rel_l2=max(fmt_errors) if fmt_errors else None)
            if t is not None:
                cell = replace(
                    cell,
                    median=t.median_ns / scale,
                    low=None if t.low_ns is None else t.low_ns / scale,
                    high=None if t.high_ns is None else t.high_ns / scale,
                    throughput=t.throughput,
                    throughput_unit=t.unit,
                    roofline_pct=t.roofline_pct,
                    speedup=base.median_ns / t.median_ns if base is not None and backend != baseline else None,
                    invalid="",  # a validly timed case shows its figure
                )
            cells[backend] = cell
        cells = _mark_implausible(cells, per, baseline)
        best = separated_best({b: (c.median, c.low, c.high) for b, c in cells.items() if c.median is not None})
        if best is not None:
            cells[best] = replace(cells[best], bold=True)
        dims = shape_dims[key]
        out_rows.append(TableRow(*key, dims=tuple(dims.get(label, "") for label in sig), cells=cells))
    order = [b for per in rows.values() for b in per]
    backends = tuple(b for b in dict.fromkeys(order) if b in ran)
    left = tuple(f"{b} ({why})" for b, why in skipped.items() if b not in ran)
    rows_kept = tuple(
        TableRow(r.workload, r.preset, r.shape, r.dtype, r.dims, {b: c for b, c in r.cells.items() if b in backends})
        for r in out_rows
    )
    return PaperTable(sig, backends, unit, decimals, rows_kept, baseline, left)


def _mark_implausible(cells: dict[str, Cell], per: dict[str, list[Record]], baseline: str | None) -> dict[str, Cell]:
    """Cells over 10x faster than the row's reference backend on the same device class, marked for review."""
    classes = {b: device_class(recs[0]) for b, recs in per.items() if cells[b].median is not None}
    eager = eager_references(r for recs in per.values() for r in recs)
    out = dict(cells)
    for backend, dc in classes.items():
        ref = pick_reference(classes, dc, baseline, eager)
        if ref is not None and ref != backend:
            notice = review_notice(cells[ref].median / cells[backend].median, ref)  # type: ignore[operator]
            out[backend] = replace(cells[backend], review=notice)
    return out


def worst_errors(table: PaperTable) -> dict[str, tuple[float, TableRow]]:
    """Per backend, its worst rel_l2 in the table and the row where it occurred (for the parity footnote)."""
    out: dict[str, tuple[float, TableRow]] = {}
    for row in table.rows:
        for backend, cell in row.cells.items():
            if cell.rel_l2 is not None and (backend not in out or cell.rel_l2 > out[backend][0]):
                out[backend] = (cell.rel_l2, row)
    return out


def worst_format_errors(table: PaperTable) -> dict[str, tuple[float, TableRow]]:
    """Per backend, its worst format error (quantized rows: rel_l2 against the unquantized function) and its row;
    empty where the table has no quantized row (the format-error footnote)."""
    out: dict[str, tuple[float, TableRow]] = {}
    for row in table.rows:
        for backend, cell in row.cells.items():
            e = cell.format_rel_l2
            if e is not None and (backend not in out or e > out[backend][0]):
                out[backend] = (e, row)
    return out
