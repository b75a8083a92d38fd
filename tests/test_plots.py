"""Plots that answer one question each, checked on the matplotlib figures themselves: one panel per workload, no
line from one preset to another, budget lines on the error plot, calibrated ceilings on the roofline, fonts
embedded in vector output. Data: the committed H100 paper run, with planted presets."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="plots need matplotlib (the report/test extra)")

from harness import plots
from harness.results import Record

PAPER = Path(__file__).resolve().parent.parent / "results" / "cuda" / "paper.jsonl"
DECODE = "attention.decode/real/llama3-8b/bfloat16/normal/seed0@cuda"


def _raw() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAPER.read_text().splitlines() if line.strip()]


def _variant(rec: dict[str, Any], preset: str, skv: int, factor: float) -> dict[str, Any]:
    """The same case in another preset or at another length (its latency scaled)."""
    out = copy.deepcopy(rec)
    out["case"] |= {"preset": preset, "key": f"{out['case']['key']}-{preset}-{skv}"}
    out["shape_dims"] |= {"skv": skv}
    for name in ("median_ns", "ci95_low_ns", "ci95_high_ns"):
        out["timing"][name] *= factor
    return out


def _lines(fig: Any) -> list[Any]:
    return [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata()) > 1]


def test_one_panel_per_workload_and_no_line_across_presets() -> None:
    raw = _raw()
    decode = next(r for r in raw if r["case"]["key"] == DECODE)
    planted = [
        _variant(decode, "tiny", 256, 0.01),
        _variant(decode, "small", 1024, 0.05),
        _variant(decode, "real", 8192, 0.25),  # one family (real/llama3-8b): its two lengths make a line
    ]
    fig = plots.latency_vs_length([Record.from_dict(r) for r in raw + planted])
    panels = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert sorted(panels) == sorted({r["case"]["workload"] for r in raw})  # one panel per workload, no mixing
    lines = _lines(fig)
    assert len(lines) == 1, [line.get_label() for line in lines]  # only the real-preset family is joined
    assert sorted(lines[0].get_xdata()) == [8192, 32768]  # never 256 (tiny) or 1024 (small)
    assert "cuda real/llama3-8b" in lines[0].get_label()
    plots._pyplot().close(fig)


def test_error_distribution_draws_every_case_and_the_budget() -> None:
    raw = _raw()
    fig = plots.error_distribution([Record.from_dict(r) for r in raw])
    ax = fig.axes[0]
    from matplotlib.collections import PathCollection

    points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert points == len(raw)  # a strip of every case, not a worst-per-dtype point
    budget = min(r["parity"]["budget"]["rel_l2"] for r in raw)
    segments = [c for c in ax.collections if c.get_label() == "budget (strictest)"]
    assert segments and segments[0].get_segments()[0][0][1] == pytest.approx(budget)
    low, high = ax.get_ylim()
    assert low < min(r["parity"]["metrics"]["rel_l2"] for r in raw) and high > budget  # budget in view
    plots._pyplot().close(fig)


def test_roofline_draws_the_calibrated_ceilings_and_pdf_embeds_truetype_fonts() -> None:
    records = [Record.from_dict(r) for r in _raw()]
    fig = plots.roofline(records)
    ceiling = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(ceiling) == 1 and max(ceiling[0].get_ydata()) == pytest.approx(699.89, rel=1e-3)  # bf16 peak
    pdf = plots.render(fig, "pdf")
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType, embedded
