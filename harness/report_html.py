"""The HTML page of `harness report`: one self-contained file (no network, no external assets; it works offline).

Order: the summary first (per backend: its verdicts and its speed against the baseline, or else the reference
backend, from the paper table model of harness.paper_table, so the page and the paper agree), the plots inline
(PNG data: URIs), then the rows table with filters by workload, backend, dtype and verdict (plain JS over data-
attributes). A column that is "-" on every row is dropped: it says nothing.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass

from harness.paper_table import ERROR_MARK, FAIL_MARK, PASS_MARK, PaperTable, build_tables
from harness.report_rows import Row, against_caption, judged_against, layerwise_section, table
from harness.results import Record
from harness.timing_view import ORACLES, eager_references

FILTERS = ("workload", "backend", "dtype", "verdict")
EMPTY = ("-", "")


@dataclass(frozen=True)
class BackendSummary:
    """One backend over the paper table's rows (a row: one workload, preset, shape and dtype)."""

    backend: str
    passed: int
    failed: int
    errored: int
    timed: int  # rows with a valid timing
    speedup: float | None  # geometric mean of reference median / this median over rows timed on both
    compared: int  # rows in that mean


def reference_backend(tables: list[PaperTable], baseline: str | None, eager: list[str]) -> str | None:
    """--baseline, else the first timed of eager torch (`eager`: timing_view.eager_references, e.g. torch-cpu,
    cuda) and the oracle: what speeds are shown against; None when none of them was timed."""
    timed = {b for t in tables for r in t.rows for b, c in r.cells.items() if c.median is not None}
    for name in (baseline, *eager, *ORACLES):
        if name is not None and name in timed:
            return name
    return None


def summarize_backends(
    records: list[Record], baseline: str | None, include_simulated_speed: bool = False
) -> tuple[str | None, list[BackendSummary]]:
    """The reference backend and, per backend, its verdict counts and geometric-mean speedup against it."""
    tables = build_tables(records, baseline=baseline, include_simulated_speed=include_simulated_speed)
    reference = reference_backend(tables, baseline, eager_references(records))
    if reference != baseline:
        tables = build_tables(records, baseline=reference, include_simulated_speed=include_simulated_speed)
    cells: dict[str, list] = {}
    for t in tables:
        for r in t.rows:
            for backend, cell in r.cells.items():
                cells.setdefault(backend, []).append(cell)
    out = []
    for backend, cs in cells.items():
        speed = [c.speedup for c in cs if c.speedup]
        geo = math.exp(sum(math.log(s) for s in speed) / len(speed)) if speed else None
        counts = [sum(c.verdict == mark for c in cs) for mark in (PASS_MARK, FAIL_MARK, ERROR_MARK)]
        out.append(BackendSummary(backend, *counts, sum(c.median is not None for c in cs), geo, len(speed)))
    return reference, out


def _summary_html(reference: str | None, summaries: list[BackendSummary]) -> str:
    against = f"speedup vs {reference} (geo. mean)" if reference else "speedup (no reference timed)"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("backend", "passed", "failed", "errored", "timed", against))
    body = []
    for s in summaries:
        if s.backend == reference:
            speed = "reference"
        else:
            speed = f"{s.speedup:.2f}x over {s.compared}" if s.speedup is not None else "-"
        cells = [s.backend, s.passed, s.failed, s.errored, s.timed, speed]
        bad = ' class="bad"' if s.failed or s.errored else ""
        body.append(f"<tr{bad}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return (
        '<section id="summary"><h2>Summary</h2>'
        "<p>Per backend over the table's rows (a workload, shape and dtype each): parity verdicts, rows timed, "
        "and the geometric mean of the reference's median over the backend's.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></section>"
    )


def verdict_class(verdict: str) -> str:
    """pass | fail | error | skip: what the verdict filter matches."""
    word = verdict.split(maxsplit=1)[0] if verdict else "skip"
    return {"pass": "pass", "FAIL": "fail", "skip": "skip"}.get(word, "error")


def nonempty_columns(header: list[str], cells: list[list[str]]) -> list[int]:
    """The indices of the columns that hold something other than "-" on some row."""
    return [i for i in range(len(header)) if any(row[i] not in EMPTY for row in cells)]


def _filters_html(rows: list[Row]) -> str:
    selects = []
    for name in FILTERS:
        values = sorted({verdict_class(r.verdict) if name == "verdict" else getattr(r, name) for r in rows})
        options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
        selects.append(
            f'<label>{name} <select data-filter="{name}"><option value="">all</option>{options}</select></label>'
        )
    return f'<div id="filters">{" ".join(selects)} <span id="shown">{len(rows)}</span> rows shown</div>'


SCRIPT = """
function applyFilters() {
  const want = {};
  document.querySelectorAll('select[data-filter]').forEach(s => { want[s.dataset.filter] = s.value; });
  let shown = 0;
  document.querySelectorAll('#results tbody tr').forEach(tr => {
    const ok = Object.keys(want).every(k => want[k] === '' || tr.dataset[k] === want[k]);
    tr.hidden = !ok;
    if (ok) shown += 1;
  });
  document.getElementById('shown').textContent = shown;
}
document.querySelectorAll('select[data-filter]').forEach(s => s.addEventListener('change', applyFilters));
"""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f0f0f0; }
tr.bad td { background: #fde2e2; }
tr[hidden] { display: none; }
#filters { margin: 0.5em 0; font-size: 13px; }
#filters label { margin-right: 1em; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 640px; }
pre { white-space: pre-wrap; font-size: 12px; }
"""


def _results_html(rows: list[Row], baseline: str | None) -> str:
    header, cells = table(rows, baseline)
    keep = nonempty_columns(header, cells)
    head = "".join(f"<th>{html.escape(header[i])}</th>" for i in keep)
    body = []
    for row, row_cells in zip(rows, cells, strict=True):
        verdict = verdict_class(row.verdict)
        bad = verdict in ("fail", "error") or bool(row.timing_invalid)
        data = {"workload": row.workload, "backend": row.backend, "dtype": row.dtype, "verdict": verdict}
        attrs = "".join(f' data-{k}="{html.escape(v)}"' for k, v in data.items())
        tds = "".join(f"<td>{html.escape(row_cells[i])}</td>" for i in keep)
        body.append(f'<tr class="{"bad" if bad else ""}"{attrs}>{tds}</tr>')
    return (
        f'<section id="results"><h2>Results</h2>{_filters_html(rows)}'
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{chr(10).join(body)}\n</tbody></table></section>"
    )


def to_html(
    records: list[Record],
    rows: list[Row],
    *,
    title: str = "harness report",
    baseline: str | None = None,
    include_simulated_speed: bool = False,
) -> str:
    """The page: summary, plots, filterable results, layer-wise localization."""
    from harness import plots

    reference, summaries = summarize_backends(records, baseline, include_simulated_speed)
    figures = []
    for name, make in plots.PLOTS.items():
        png = base64.b64encode(plots.render(make(records), "png")).decode()
        figures.append(
            f'<figure><img alt="{name} plot" src="data:image/png;base64,{png}"><figcaption>{name}</figcaption></figure>'
        )
    env = next((r.environment for r in records if r.environment), {}) or {}
    env_text = ", ".join(f"{k}: {env[k]}" for k in ("host", "cpu", "python", "torch", "git_commit") if env.get(k))
    layerwise = layerwise_section(records)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(env_text)}</p>
{f"<p>{html.escape(against_caption(rows))}</p>" if judged_against(rows) else ""}
{_summary_html(reference, summaries)}
<h2>Plots</h2>
{"".join(figures)}
{_results_html(rows, baseline)}
{f"<pre>{html.escape(layerwise)}</pre>" if layerwise else ""}
<script>{SCRIPT}</script>
</body></html>
"""
