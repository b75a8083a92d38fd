"""Plots for reports and papers (matplotlib, imported only here), each answering one question:
- latency: how does latency grow with sequence length? One panel per workload (small multiples), backends as
  colours; a line joins only cases of one preset and shape family (the same backend, dtype, preset and shape,
  differing in length), with its CI as a band; a lone case is a point with its CI as error bars. Never a line
  from one preset to another: their other dimensions differ too.
- error: how far from float64 is each backend in each dtype? The rel_l2 of every case as a strip (and a box where
  there are enough cases), per dtype and backend, with the dtype's strictest budget drawn as a dashed line.
- roofline: how close to the device's limits? Achieved TFLOP/s against arithmetic intensity, with the calibrated
  ceilings the records were judged against (or those given) drawn.
Vector output embeds its fonts (TrueType in PDF, glyphs as paths in SVG); the style follows conference figures
(small serif-free type, no top/right spines, light grid). Simulated backends and invalid timings never appear in
speed plots (harness.timing_view).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.results import Record, TimingRecord

if TYPE_CHECKING:
    from harness.compare import CaseRatio
from harness.timing_view import valid_timing

FORMATS = ("png", "svg", "pdf")
STYLE = {
    "pdf.fonttype": 42,  # TrueType, embedded: editors and publishers refuse Type 3
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "legend.frameon": False,
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps the backend choice out of users' sessions
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def _styled() -> Iterator[Any]:
    plt = _pyplot()
    with plt.rc_context(STYLE):
        yield plt


def _colours(backends: Iterable[str]) -> dict[str, Any]:
    """One colour per backend, the same in every panel and plot of a report."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {b: cmap(i % 10) for i, b in enumerate(sorted(set(backends)))}


def sequence_length(record: Record) -> int | None:
    """The length a case scales with: keys (attention), tokens (MoE), stream length (LLM)."""
    dims = record.shape_dims or {}
    for key in ("skv", "seq", "t"):
        if isinstance(dims.get(key), int):
            return dims[key]
    return None


def _timed(records: Iterable[Record]) -> list[tuple[Record, TimingRecord]]:
    """The records timed on a real device, each with its timing; an invalid timing is never plotted."""
    return [(r, t) for r in records if (t := valid_timing(r)) is not None and not r.simulated]


def _family(record: Record) -> tuple[str, str, str, str]:
    """What a latency line may join: one backend, dtype, preset and shape (only the length may differ)."""
    c = record.case
    return (c.backend, c.dtype, c.preset, c.shape)


def latency_vs_length(records: list[Record]) -> Any:
    """Small multiples: one panel per workload, latency (us, log) against sequence length."""
    timed = [(r, t, n) for r, t in _timed(records) if (n := sequence_length(r)) is not None]
    workloads = list(dict.fromkeys(r.case.workload for r, _, _ in timed)) or ["(no timed cases)"]
    colours = _colours(r.case.backend for r, _, _ in timed)
    shapes = list(dict.fromkeys((r.case.preset, r.case.shape) for r, _, _ in timed))
    dtypes = {r.case.dtype for r, _, _ in timed}
    cols = min(3, len(workloads))
    rows = math.ceil(len(workloads) / cols)
    with _styled() as plt:
        fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols + 1.6, 2.0 * rows), squeeze=False)
        spare = list(axes.flat[len(workloads) :])
        for ax in spare:
            ax.axis("off")
        handles: dict[str, Any] = {}
        for ax, workload in zip(axes.flat, workloads, strict=False):
            families: dict[tuple[str, ...], list[tuple[int, TimingRecord]]] = {}
            for r, t, n in timed:
                if r.case.workload == workload:
                    families.setdefault(_family(r), []).append((n, t))
            for (backend, dtype, preset, shape), points in families.items():
                points.sort(key=lambda p: p[0])
                xs = [n for n, _ in points]
                ys = [t.median_ns / 1e3 for _, t in points]
                lo = [(t.ci95_low_ns or t.median_ns) / 1e3 for _, t in points]
                hi = [(t.ci95_high_ns or t.median_ns) / 1e3 for _, t in points]
                label = f"{backend} {preset}/{shape}" + (f" {dtype}" if len(dtypes) > 1 else "")
                style = {"color": colours[backend], "marker": MARKERS[shapes.index((preset, shape)) % len(MARKERS)]}
                if len(points) > 1:
                    (line,) = ax.plot(xs, ys, label=label, **style)
                    ax.fill_between(xs, lo, hi, color=colours[backend], alpha=0.2, linewidth=0)
                else:
                    err = [[y - a for y, a in zip(ys, lo, strict=True)], [b - y for y, b in zip(ys, hi, strict=True)]]
                    line = ax.errorbar(xs, ys, yerr=err, linestyle="none", capsize=2, label=label, **style)
                handles.setdefault(label, line)
            ax.set_title(workload)
            ax.set_yscale("log")
            lengths = [n for r, _, n in timed if r.case.workload == workload]
            if lengths and max(lengths) >= 4 * min(lengths):
                ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length (keys / tokens)")
            ax.set_ylabel("median latency (us)")
        if handles and spare:  # one legend for every panel, in a spare cell of the grid or beside it
            spare[0].legend(list(handles.values()), list(handles), loc="upper left")
        elif handles:
            fig.legend(list(handles.values()), list(handles), loc="outside right upper")
        fig.set_layout_engine("constrained")
    return fig


def _ceilings(records: list[Record], given: dict[str, float] | None) -> list[tuple[float, float]]:
    """(peak TFLOP/s, bandwidth GB/s) pairs: the calibrated ceilings the records were judged against, or `given`."""
    pairs = {
        (roof["peak_tflops"], roof["bandwidth_gbps"])
        for r, t in _timed(records)
        if (roof := t.roofline) and roof.get("peak_tflops") and roof.get("bandwidth_gbps")
    }
    if given and given.get("tflops") and given.get("gbps"):
        pairs.add((given["tflops"], given["gbps"]))
    return sorted(pairs)


def roofline(records: list[Record], ceilings: dict[str, float] | None = None) -> Any:
    """Achieved TFLOP/s against arithmetic intensity; calibrated ceilings drawn when present (from the records'
    timing.roofline or `ceilings`), otherwise the plot says none were calibrated for this device."""
    by_backend: dict[str, list[tuple[float, float]]] = {}
    for r, t in _timed(records):
        if t.tflops and t.bytes:
            by_backend.setdefault(r.case.backend, []).append((t.flops / t.bytes, t.tflops))
    colours = _colours(by_backend)
    with _styled() as plt:
        fig, ax = plt.subplots(figsize=(4.2, 2.8))
        for backend, points in sorted(by_backend.items()):
            ax.scatter([p[0] for p in points], [p[1] for p in points], label=backend, s=14, color=colours[backend])
        pairs = _ceilings(records, ceilings)
        intensities = [p[0] for pts in by_backend.values() for p in pts] or [1.0]
        xs = [
            2.0**i
            for i in range(math.floor(math.log2(min(intensities))) - 1, math.ceil(math.log2(max(intensities))) + 3)
        ]
        for peak, gbps in pairs:
            ax.plot(xs, [min(peak, x * gbps / 1e3) for x in xs], "k--", linewidth=0.8)
            ax.annotate(
                f"{peak:.0f} TFLOP/s, {gbps / 1e3:.2f} TB/s", (xs[-1], peak), ha="right", va="bottom", fontsize=6
            )
        if not pairs:
            ax.text(0.02, 0.95, "no calibrated ceilings for this device (harness calibrate)", transform=ax.transAxes,
                    fontsize=7, va="top")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte)")
        ax.set_ylabel("achieved TFLOP/s")
        if by_backend:
            ax.legend()
        fig.set_layout_engine("constrained")
    return fig


DTYPE_ORDER = ("float64", "float32", "float16", "bfloat16")


def error_distribution(records: list[Record]) -> Any:
    """rel_l2 of every judged case per dtype and backend (strip, and a box from five cases), budget lines drawn."""
    errors: dict[tuple[str, str], list[float]] = {}
    budgets: dict[str, float] = {}
    simulated = {r.case.backend for r in records if r.simulated}
    for r in records:
        p = r.parity
        if p is None or p.metrics is None:
            continue
        errors.setdefault((r.case.dtype, r.case.backend), []).append(max(p.metrics.rel_l2, 1e-17))
        if p.budget is not None and p.budget.rel_l2:
            budgets[r.case.dtype] = min(budgets.get(r.case.dtype, math.inf), p.budget.rel_l2)
    dtypes = [d for d in DTYPE_ORDER if any(k[0] == d for k in errors)]
    dtypes += sorted({k[0] for k in errors} - set(dtypes))
    backends = sorted({k[1] for k in errors})
    colours = _colours(backends)
    width = 0.8 / max(1, len(backends))
    with _styled() as plt:
        fig, ax = plt.subplots(figsize=(max(3.2, 1.1 * len(dtypes) * max(1, len(backends)) ** 0.5 + 1.5), 2.8))
        for i, dtype in enumerate(dtypes):
            for j, backend in enumerate(backends):
                values = errors.get((dtype, backend))
                if not values:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                if len(values) >= 5:
                    ax.boxplot(values, positions=[x], widths=width * 0.8, showfliers=False, manage_ticks=False)
                jitter = [x + width * 0.3 * ((k * 0.618) % 1 - 0.5) for k in range(len(values))]
                label = backend + (" (simulated)" if backend in simulated else "")
                ax.scatter(jitter, values, s=8, color=colours[backend], alpha=0.8, label=label if i == 0 else None)
            if dtype in budgets:
                ax.hlines(budgets[dtype], i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=0.8,
                          label="budget (strictest)" if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(dtypes)), dtypes)
        ax.set_xlim(-0.6, len(dtypes) - 0.4)
        ax.set_yscale("log")
        ax.set_ylabel("rel_l2 against float64")
        if errors:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.set_layout_engine("constrained")
    return fig


def ratio_plot(ratios: list[CaseRatio], labels: tuple[str, str] = ("OLD", "NEW")) -> Any:
    """`harness compare`: NEW/OLD per case, one point with its 95% CI each, one panel per workload (cases as
    rows, backends as colours), a line at 1.0; significant changes filled, the rest hollow. Invalid timings are
    never drawn (compare lists them apart)."""
    shown = sorted((r for r in ratios if not r.invalid and r.ratio), key=lambda r: (r.workload, r.backend, r.label))
    workloads = list(dict.fromkeys(r.workload for r in shown)) or ["(no case timed in both runs)"]
    sizes = [max(1, sum(r.workload == w for r in shown)) for w in workloads]
    colours = _colours(r.backend for r in shown)
    with _styled() as plt:
        fig, axes = plt.subplots(
            len(workloads), 1, figsize=(4.2, 0.9 + 0.22 * sum(sizes) + 0.35 * len(workloads)), sharex=True,
            squeeze=False, gridspec_kw={"height_ratios": sizes},
        )  # fmt: skip
        for ax, workload in zip(axes[:, 0], workloads, strict=True):
            cases = [r for r in shown if r.workload == workload]
            for y, r in enumerate(cases):
                lo, hi = (r.low, r.high) if r.low is not None and r.high is not None else (r.ratio, r.ratio)
                err = [[r.ratio - lo], [hi - r.ratio]]
                face = colours[r.backend] if r.change else "white"
                ax.errorbar([r.ratio], [y], xerr=err, fmt=MARKERS[0], color=colours[r.backend], mfc=face, capsize=2)
            ax.axvline(1.0, color="k", linewidth=0.8)
            ax.set_yticks(range(len(cases)), [f"{r.label} {r.backend}" for r in cases])
            ax.set_ylim(max(len(cases), 1) - 0.5, -0.5)  # an empty panel (nothing timed in both) still spans a row
            ax.set_title(workload, loc="left")
            ax.grid(axis="y", visible=False)
        axes[-1, 0].set_xscale("log")
        axes[-1, 0].xaxis.set_major_formatter(lambda v, _: f"{v:g}")  # 0.5, 1, 2: not 10^0
        axes[-1, 0].set_xlabel(f"{labels[1]} / {labels[0]} latency (95% CI; filled: significant change)")
        fig.set_layout_engine("constrained")
    return fig


error_vs_dtype = error_distribution  # the earlier name
PLOTS = {"latency": latency_vs_length, "roofline": roofline, "error": error_distribution}


def render(fig: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    with _styled() as plt:
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        plt.close(fig)
    return buf.getvalue()


def write_plots(records: list[Record], folder: Path, fmt: str = "png") -> list[Path]:
    if fmt not in FORMATS:
        raise ValueError(f"plot format {fmt!r} is not one of: {', '.join(FORMATS)}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in PLOTS.items():
        path = folder / f"{name}.{fmt}"
        path.write_bytes(render(make(records), fmt))
        paths.append(path)
    return paths
