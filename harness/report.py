"""Reports from result records: one row per backend x case (seeds and input distributions folded in).

A row's verdict counts its cases; its errors are the worst over seeds and distributions; its latency is the
median over the timed cases (normal inputs). Simulated backends keep their rows but no speed figures unless
asked, since their timings say nothing about a real device.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

FORMATS = ("md", "csv")


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
    decode_tokens_per_s: float | None  # LLM: decode step throughput (prefill: tokens/s below)
    prefill_tokens_per_s: float | None
    median_us: float | None
    ci95_us: str
    tflops: float | None
    gbps: float | None
    shape_info: str
    note: str


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


def summarize(records: Iterable[dict[str, Any]], *, include_simulated_speed: bool = False) -> list[Row]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in records:
        c = r["case"]
        key = (c["workload"], c["preset"], c["shape"], c["dtype"], c["backend"])
        groups.setdefault(key, []).append(r)
    rows = []
    for key, recs in groups.items():
        parity = [r["parity"] for r in recs if r.get("parity")]
        timed = [r["timing"] for r in recs if r.get("timing")]
        simulated = any(r.get("simulated") for r in recs)
        if simulated and not include_simulated_speed:
            timed = []
        dets = [p.get("deterministic") for p in parity if p.get("deterministic") is not None]
        routing = [p["routing"] for p in parity if p.get("routing")]
        llm = [p["llm"] for p in parity if p.get("llm")]
        greedy = [p["greedy"]["min"] for p in parity if p.get("greedy")]
        decode = [r["timing_variants"]["decode"] for r in recs if (r.get("timing_variants") or {}).get("decode")]
        if simulated and not include_simulated_speed:
            decode = []
        notes = [r["reason"] for r in recs if r.get("reason")]
        median_ns = statistics.median(t["median_ns"] for t in timed) if timed else None
        ci = ""
        if len(timed) == 1:
            ci = f"{timed[0]['ci95_low_ns'] / 1e3:.4g}-{timed[0]['ci95_high_ns'] / 1e3:.4g}"
        rows.append(
            Row(
                *key,
                verdict=_fold_verdict([r["status"] for r in recs]),
                cases=len(recs),
                rel_l2=_max(p["metrics"]["rel_l2"] for p in parity if p.get("metrics")),
                worst_row_rel_l2=_max(p["metrics"]["worst_row_rel_l2"] for p in parity if p.get("metrics")),
                deterministic=all(dets) if dets else None,
                routing_agreement=min(r["agreement"] for r in routing) if routing else None,
                near_ties=sum(r["near_ties"] for r in routing) if routing else None,
                routing_unexplained=sum(r["unexplained"] for r in routing) if routing else None,
                top1_agreement=min(m["top1_agreement"] for m in llm) if llm else None,
                kl_mean=_max(m["kl_mean"] for m in llm),
                greedy_agreement=min(greedy) if greedy else None,
                decode_tokens_per_s=_max(d.get("tokens_per_s") for d in decode),
                prefill_tokens_per_s=_max(t.get("tokens_per_s") for t in timed),
                median_us=median_ns / 1e3 if median_ns is not None else None,
                ci95_us=ci,
                tflops=_max(t.get("tflops") for t in timed),
                gbps=_max(t.get("gbps") for t in timed),
                shape_info=next((r["shape_info"] for r in recs if r.get("shape_info")), ""),
                note="; ".join(_notes(simulated, any(t["noisy"] for t in timed), notes)),
            )
        )
    return rows


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
    ("routing", "routing agree / near-ties / unexplained"),
    ("llm", "top-1 / KL / greedy"),
    ("median_us", "median us"),
    ("tflops", "TFLOP/s"),
    ("gbps", "GB/s"),
    ("tokens", "tok/s prefill / decode"),
    ("note", "note"),
)


def table_cells(row: Row) -> list[str]:
    values = asdict(row)
    values["case"] = f"{row.workload} {row.preset}/{row.shape}"
    values["llm"] = (
        f"{row.top1_agreement:.1%} / {row.kl_mean:.2g} / {row.greedy_agreement}"
        if row.top1_agreement is not None
        else None
    )
    values["tokens"] = (
        f"{row.prefill_tokens_per_s:.4g} / {fmt(row.decode_tokens_per_s)}" if row.prefill_tokens_per_s else None
    )
    values["routing"] = (
        f"{row.routing_agreement:.1%} / {row.near_ties} / {row.routing_unexplained}"
        if row.routing_agreement is not None
        else None
    )
    cells = [fmt(values[name]) for name, _ in TABLE_COLUMNS]
    cells[-1] = cells[-1][:90]
    return cells


def to_markdown(rows: list[Row]) -> str:
    header = [title for _, title in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in table_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = [f.name for f in fields(Row)]
    writer.writerow(names)
    for row in rows:
        values = asdict(row)
        writer.writerow(["" if values[n] is None else values[n] for n in names])
    return buf.getvalue()


def layerwise_section(records: Iterable[dict[str, Any]]) -> str:
    """Markdown: per LLM case run with --layerwise, the culprit (or none), why, and the per-layer errors."""
    lines = []
    for r in records:
        lw = (r.get("parity") or {}).get("layerwise")
        if not lw:
            continue
        lines.append(f"- `{r['case']['key']}`: {lw['explanation']}")
        lines.append("  - propagated (median row rel_l2 per layer): " + ", ".join(f"{e:.3g}" for e in lw["propagated"]))
        worst: dict[int, dict[str, Any]] = {}
        for e in lw["teacher_forced"]:
            if e["layer"] not in worst or e["median_row_rel_l2"] > worst[e["layer"]]["median_row_rel_l2"]:
                worst[e["layer"]] = e
        lines.append(
            "  - teacher-forced (worst op per layer): "
            + ", ".join(f"{i}: {e['kind']} {e['median_row_rel_l2']:.3g}" for i, e in sorted(worst.items()))
        )
    return "\n## Layer-wise localization\n\n" + "\n".join(lines) + "\n" if lines else ""


def render(records: Iterable[dict[str, Any]], fmt_name: str, *, include_simulated_speed: bool = False) -> str:
    records = list(records)
    rows = summarize(records, include_simulated_speed=include_simulated_speed)
    if fmt_name == "md":
        return to_markdown(rows) + layerwise_section(records)
    if fmt_name == "csv":
        return to_csv(rows)
    raise ValueError(f"report format {fmt_name!r} is not one of: {', '.join(FORMATS)}")
