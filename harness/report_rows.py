"""The rows of `harness report`: one per backend x case (seeds and input distributions folded in), and the table
cells, speedups and captions every format shares (the writers: harness.report, harness.report_formats).

A row's verdict counts its cases; its errors are the worst over seeds and distributions; its latency is the
median over the timed cases (normal inputs). Simulated backends keep their rows but no speed figures unless
asked, since their timings say nothing about a real device; a row with an invalid timing shows its reason and
no speed figure at all (harness.timing_view).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from harness.parity_llm import OpError
from harness.port import against_label, ratio_figure
from harness.quant_parity import FORMAT_ERROR
from harness.results import ParityRecord, Record
from harness.timing_view import (
    device_class,
    eager_references,
    invalid_reason,
    pick_reference,
    plural,
    review_notice,
)


@dataclass(frozen=True)
class Row:
    workload: str
    preset: str
    shape: str
    dtype: str
    backend: str
    verdict: str
    cases: int
    rel_l2: float | None
    worst_row_rel_l2: float | None
    deterministic: bool | None
    routing_agreement: float | None  # MoE: worst fraction of tokens with the reference's exact top-k set
    near_ties: int | None  # MoE: tokens at a top-k boundary closer than the dtype resolves, summed over cases
    routing_unexplained: int | None  # MoE: disagreements no near-tie explains, summed over cases
    top1_agreement: float | None  # LLM: worst fraction of positions whose argmax token is the reference's
    kl_mean: float | None  # LLM: worst mean KL(ref || out) per position
    greedy_agreement: int | None  # LLM: shortest greedy-decode prefix equal to the reference's
    compile_s: float | None  # export / compile / session-creation seconds, apart from run time
    decode_tokens_per_s: float | None  # LLM: decode step throughput (prefill: tokens/s below)
    prefill_tokens_per_s: float | None
    median_us: float | None
    ci95_low_us: float | None  # the bootstrap 95% CI of the median, where one timed case makes the row
    ci95_high_us: float | None
    tflops: float | None
    gbps: float | None
    roofline_pct: float | None  # measured time's share of the floor set by `harness calibrate`'s ceilings
    shape_info: str
    note: str
    against: str | None = None  # --against: the baseline the cases were judged against (port.against_label)
    baseline_rel_l2: float | None = None  # the baseline's worst rel_l2 on the same inputs
    error_ratio: float | None = None  # the worst error / baseline error, as --against judged it (port.RatioFigure)
    device_class: str = ""  # cpu, cuda, npu (timing_view.device_class): speedups are judged within one class
    timing_invalid: str = ""  # why a timed case's timing is invalid: the row then shows no speed figure at all
    invariant: bool | None = None  # --invariance: every part of every case bitwise equal run alone (None: not run)
    invariance_diff: float | None = None  # the largest difference between a part alone and in the whole call
    layout: str | None = None  # dist.* cases: world size N vs 1 (harness/layout.py), e.g. "2 vs 1: equal"
    format_rel_l2: float | None = None  # quantized formats: the worst rel_l2 against the unquantized function
    review: str = ""  # an implausible speedup against the case's reference backend (timing_view.review_notice)


def _fold_verdict(statuses: list[str]) -> str:
    n = len(statuses)
    for status, label in (("crashed", "CRASH"), ("timeout", "TIMEOUT"), ("error", "ERROR"), ("failed", "FAIL")):
        bad = statuses.count(status)
        if bad:
            return f"{label} {bad}/{n}"
    passed = statuses.count("passed")
    if passed:
        return f"pass {passed}/{n}" if passed == n else f"pass {passed}/{n} ({n - passed} skipped)"
    return "skip"


def _max(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _notes(simulated: bool, noisy: bool, reasons: list[str]) -> list[str]:
    return (["simulated"] if simulated else []) + (["noisy timing"] if noisy else []) + reasons[:1]


def _sections(parity: list[ParityRecord], name: str) -> list[Mapping[str, Any]]:
    """The workload sections of that name (routing, llm, greedy) in the parity sections that have one."""
    return [sec for p in parity if (sec := p.section(name))]


def summarize(
    records: Iterable[Record], *, include_simulated_speed: bool = False, baseline: str | None = None
) -> list[Row]:
    """The rows; a row with an invalid timing shows its reason and no speed figure (none of its cases is ranked),
    and one over 10x faster than its case's reference backend (`baseline` first) is marked for review."""
    groups: dict[tuple[str, ...], list[Record]] = {}
    for r in records:
        c = r.case
        groups.setdefault((c.workload, c.preset, c.shape, c.dtype, c.backend), []).append(r)
    rows = []
    for key, recs in groups.items():
        parity = [r.parity for r in recs if r.parity is not None]
        metrics = [p.metrics for p in parity if p.metrics is not None]
        timed = [r.timing for r in recs if r.timing is not None]
        simulated = any(r.simulated for r in recs)
        decode = [d for r in recs if (d := (r.timing_variants or {}).get("decode")) is not None]
        invalid = [why for r in recs if (why := invalid_reason(r))]
        if invalid or (simulated and not include_simulated_speed):
            timed, decode = [], []
        dets = [p.deterministic for p in parity if p.deterministic is not None]
        routing, llm = _sections(parity, "routing"), _sections(parity, "llm")
        invariance = [i for i in _sections(parity, "invariance") if i.get("invariant") is not None]
        greedy = [g["min"] for g in _sections(parity, "greedy")]
        notes = [r.reason for r in recs if r.reason and r.reason not in invalid]
        median_ns = statistics.median(t.median_ns for t in timed) if timed else None
        one = timed[0] if len(timed) == 1 and None not in (timed[0].ci95_low_ns, timed[0].ci95_high_ns) else None
        ci = (one.ci95_low_ns / 1e3, one.ci95_high_ns / 1e3) if one is not None else (None, None)
        rows.append(
            Row(
                *key,
                verdict=_fold_verdict([r.status for r in recs]),
                cases=len(recs),
                rel_l2=_max(m.rel_l2 for m in metrics),
                worst_row_rel_l2=_max(m.worst_row_rel_l2 for m in metrics),
                deterministic=all(dets) if dets else None,
                invariant=all(i["invariant"] for i in invariance) if invariance else None,
                invariance_diff=_max(i.get("max_abs_diff") for i in invariance),
                layout=_layout(_sections(parity, "layout")),
                format_rel_l2=_max(f.get("rel_l2") for f in _sections(parity, FORMAT_ERROR)),
                routing_agreement=min(r["agreement"] for r in routing) if routing else None,
                near_ties=sum(r["near_ties"] for r in routing) if routing else None,
                routing_unexplained=sum(r["unexplained"] for r in routing) if routing else None,
                top1_agreement=min(m["top1_agreement"] for m in llm) if llm else None,
                kl_mean=_max(m["kl_mean"] for m in llm),
                greedy_agreement=min(greedy) if greedy else None,
                compile_s=sum(sum(r.compile.values()) for r in recs if r.compile) or None,
                decode_tokens_per_s=_max(d.tokens_per_s for d in decode),
                prefill_tokens_per_s=_max(t.tokens_per_s for t in timed),
                median_us=median_ns / 1e3 if median_ns is not None else None,
                ci95_low_us=ci[0],
                ci95_high_us=ci[1],
                tflops=_max(t.tflops for t in timed),
                gbps=_max(t.gbps for t in timed),
                roofline_pct=_max(t.roofline_pct for t in timed),
                shape_info=next((r.shape_info for r in recs if r.shape_info), ""),
                note="; ".join(_notes(simulated, any(t.noisy for t in timed), notes)),
                against=next((label for p in parity if (label := against_label(p))), None),
                baseline_rel_l2=_max(p.baseline.metrics.rel_l2 for p in parity if p.baseline is not None),
                error_ratio=_max(f.ratio for p in parity if (f := ratio_figure(p)) is not None),
                device_class=next((device_class(r) for r in recs if r.timing is not None), ""),
                timing_invalid=_invalid_text(invalid, sum(r.timing is not None for r in recs)),
            )
        )
    return _mark_implausible(rows, baseline, eager_references(r for recs in groups.values() for r in recs))


def _invalid_text(reasons: list[str], timed: int) -> str:
    """`invalid: REASON` text of a row, with how many of its timed cases were invalid when not all."""
    if not reasons:
        return ""
    return reasons[0] + (f" ({len(reasons)} of {timed} timed cases)" if len(reasons) < timed else "")


def _case_of(row: Row) -> tuple[str, str, str, str]:
    return (row.workload, row.preset, row.shape, row.dtype)


def _mark_implausible(rows: list[Row], baseline: str | None, eager: list[str]) -> list[Row]:
    """Rows over IMPLAUSIBLE_SPEEDUP faster than their case's reference on the same device class, marked."""
    timed: dict[tuple[str, ...], dict[str, Row]] = {}
    for row in rows:
        if row.median_us:
            timed.setdefault(_case_of(row), {})[row.backend] = row
    out = []
    for row in rows:
        peers = timed.get(_case_of(row), {})
        ref = pick_reference({b: r.device_class for b, r in peers.items()}, row.device_class, baseline, eager)
        ref_us = peers[ref].median_us if ref is not None else None
        if ref is not None and ref != row.backend and ref_us and row.median_us:
            out.append(replace(row, review=review_notice(ref_us / row.median_us, ref)))
        else:
            out.append(row)
    return out


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


TABLE_COLUMNS = (
    ("case", "case"),
    ("dtype", "dtype"),
    ("backend", "backend"),
    ("verdict", "verdict"),
    ("rel_l2", "rel_l2 (max)"),
    ("worst_row_rel_l2", "worst row"),
    ("deterministic", "bitwise"),
    ("invariant", "batch-invariant"),
    ("layout", "layout N vs 1"),
    ("routing", "routing agree / near-ties / unexplained"),
    ("llm", "top-1 / KL / greedy"),
    ("median_us", "median us"),
    ("tflops", "TFLOP/s"),
    ("gbps", "GB/s"),
    ("roofline_pct", "% roof"),
    ("tokens", "tok/s prefill / decode"),
    ("compile_s", "export s"),
    ("note", "note"),
)


def _layout(sections: list[Mapping[str, Any]]) -> str | None:
    """The worst layout verdict of a row's dist.* cases: failed, else differing (largest difference), else equal;
    "not checked" when every case ran at world size 1 (nothing compared: not a pass)."""
    if not sections:
        return None
    sections = [s for s in sections if s.get("checked", s.get("world_size") != 1)]  # older records: no `checked`
    if not sections:
        return "not checked (world size 1)"
    worlds = "/".join(sorted({str(s.get("world_size")) for s in sections}))
    if not all(s.get("within_budget") for s in sections):
        return f"{worlds} vs 1: FAIL (error grows)"
    diffs = [d for s in sections if not s.get("bitwise_equal") and (d := s.get("max_abs_diff")) is not None]
    return f"{worlds} vs 1: diff {max(diffs):.2g}" if diffs else f"{worlds} vs 1: equal"


def table_cells(row: Row) -> list[str]:
    values = asdict(row)
    values["case"] = f"{row.workload} {row.preset}/{row.shape}"
    values["llm"] = (
        f"{row.top1_agreement:.1%} / {row.kl_mean:.2g} / {row.greedy_agreement}"
        if row.top1_agreement is not None
        else None
    )
    values["invariant"] = (
        f"NO ({fmt(row.invariance_diff)})" if row.invariant is False else row.invariant
    )  # --invariance: "yes", "NO (largest difference)", "-" when not run or not applicable
    values["tokens"] = (
        f"{row.prefill_tokens_per_s:.4g} / {fmt(row.decode_tokens_per_s)}" if row.prefill_tokens_per_s else None
    )
    values["routing"] = (
        f"{row.routing_agreement:.1%} / {row.near_ties} / {row.routing_unexplained}"
        if row.routing_agreement is not None
        else None
    )
    if row.timing_invalid:  # never a figure: the reason instead
        values |= {"median_us": f"invalid: {row.timing_invalid}", "tflops": "invalid", "gbps": "invalid"}
        values |= {"roofline_pct": "invalid", "tokens": "invalid"}
    cells = [fmt(values[name]) for name, _ in TABLE_COLUMNS]
    cells[-1] = "; ".join(c for c in (row.review, cells[-1][:90]) if c and c != "-") or "-"
    return cells


SPEEDUP_AFTER = [name for name, _ in TABLE_COLUMNS].index("median_us") + 1  # the --baseline column's place
FORMAT_AFTER = [name for name, _ in TABLE_COLUMNS].index("worst_row_rel_l2") + 1  # quantized rows: format error
KERNEL_ERROR_TITLE = "rel_l2 (max; quantized: kernel vs emulation)"
FORMAT_ERROR_TITLE = "format error rel_l2 (vs unquantized)"
AGAINST_AFTER = [name for name, _ in TABLE_COLUMNS].index("verdict") + 1  # --against runs: its columns' place
AGAINST_FIELDS = ("against", "baseline_rel_l2", "error_ratio")


def judged_against(rows: list[Row]) -> list[str]:
    """The baselines the rows were judged against (--against), in order; [] for absolute-mode records."""
    return list(dict.fromkeys(r.against for r in rows if r.against is not None))


def against_caption(rows: list[Row]) -> str:
    """`Judged against torch-cpu: ...` for the records of an --against run, "" otherwise."""
    labels = judged_against(rows)
    if not labels:
        return ""
    return (
        f"Judged against {', '.join(labels)}: a case passes when its error against the float64 reference is within "
        "--against-ratio times the baseline's (floored at a fifth of the dtype's budget)."
    )


def table(rows: list[Row], baseline: str | None) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the md and html tables; with a baseline, a speedup column after the median."""
    header = [title for _, title in TABLE_COLUMNS]
    cells = [table_cells(row) for row in rows]
    if any(row.format_rel_l2 is not None for row in rows):  # two errors apart: the kernel's and the format's
        header[header.index("rel_l2 (max)")] = KERNEL_ERROR_TITLE
        header.insert(FORMAT_AFTER, FORMAT_ERROR_TITLE)
        for row, row_cells in zip(rows, cells, strict=True):
            row_cells.insert(FORMAT_AFTER, fmt(row.format_rel_l2))
    if judged_against(rows):
        header[AGAINST_AFTER:AGAINST_AFTER] = ["against", "baseline rel_l2", "error / baseline (max)"]
        for row, row_cells in zip(rows, cells, strict=True):
            ratio = "-" if row.error_ratio is None else f"{row.error_ratio:.3g}x"
            row_cells[AGAINST_AFTER:AGAINST_AFTER] = [fmt(row.against), fmt(row.baseline_rel_l2), ratio]
    if baseline is not None:
        speed = speedups(rows, baseline)
        header.insert(SPEEDUP_AFTER, f"speedup vs {baseline}")
        for i, row_cells in enumerate(cells):
            cell = "invalid" if rows[i].timing_invalid else f"{speed[i]:.2f}x" if i in speed else "-"
            row_cells.insert(SPEEDUP_AFTER, cell)
    return header, cells


def left_out(rows: list[Row]) -> str:
    """` (2 rows with an invalid timing left out: memo-cheat)` after a geometric mean, "" when none."""
    bad = [r.backend for r in rows if r.timing_invalid]
    if not bad:
        return ""
    return f" ({plural(len(bad), 'row')} with an invalid timing left out: {', '.join(dict.fromkeys(bad))})"


def geomean_speedups(rows: list[Row], baseline: str) -> dict[str, float]:
    """Per backend, the geometric mean of its speedups against `baseline` over the cases timed on both."""
    speed = speedups(rows, baseline)
    out = {}
    for backend in sorted({rows[i].backend for i in speed}):
        values = [speed[i] for i in speed if rows[i].backend == backend]
        out[backend] = math.exp(sum(math.log(v) for v in values) / len(values))
    return out


def layerwise_section(records: Iterable[Record]) -> str:
    """Markdown: per model case run with --layerwise, the culprit (or none), why, and the per-layer errors."""
    lines = []
    for r in records:
        lw = r.parity.layerwise if r.parity is not None else None
        if lw is None:
            continue
        if lw.unavailable:
            lines.append(f"- `{r.case.key}`: not localized: {lw.unavailable}")
            continue
        lines.append(f"- `{r.case.key}`: {lw.explanation}")
        lines.append("  - propagated (median row rel_l2 per layer): " + ", ".join(f"{e:.3g}" for e in lw.propagated))
        worst: dict[int, OpError] = {}
        for e in lw.teacher_forced:
            if e.layer not in worst or e.median_row_rel_l2 > worst[e.layer].median_row_rel_l2:
                worst[e.layer] = e
        lines.append(
            "  - teacher-forced (worst op per layer): "
            + ", ".join(f"{i}: {e.kind} {e.median_row_rel_l2:.3g}" for i, e in sorted(worst.items()))
        )
    return "\n## Layer-wise localization\n\n" + "\n".join(lines) + "\n" if lines else ""


def speedups(rows: list[Row], baseline: str | None) -> dict[int, float]:
    """Row index -> baseline median / row median, within the same case and dtype."""
    if baseline is None:
        return {}
    base = {(r.workload, r.preset, r.shape, r.dtype): r.median_us for r in rows if r.backend == baseline}
    out = {}
    for i, r in enumerate(rows):
        b = base.get((r.workload, r.preset, r.shape, r.dtype))
        if b and r.median_us:
            out[i] = b / r.median_us
    return out
