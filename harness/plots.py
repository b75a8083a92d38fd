"""Plots for reports (matplotlib, imported only here): latency against sequence length per backend, roofline,
and error against dtype per backend. Simulated backends and invalid timings never appear in speed plots.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.results import Record, TimingRecord
from harness.timing_view import valid_timing

FORMATS = ("png", "svg", "pdf")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps the backend choice out of users' sessions
    import matplotlib.pyplot as plt

    return plt


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


def latency_vs_length(records: list[Record]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    series: dict[str, list[tuple[int, float]]] = {}
    for r, t in _timed(records):
        length = sequence_length(r)
        if length is None:
            continue
        label = f"{r.case.backend} {r.case.workload} {r.case.dtype}"
        series.setdefault(label, []).append((length, t.median_ns / 1e3))
    backends = sorted({label.split()[0] for label in series})
    styles = ["-", "--", ":", "-."]
    for label, points in sorted(series.items()):
        by_length: dict[int, list[float]] = {}
        for length, value in points:
            by_length.setdefault(length, []).append(value)
        xs = sorted(by_length)  # one point per length: the median over shapes of that length
        style = styles[backends.index(label.split()[0]) % len(styles)]  # one line style per backend
        ax.plot(xs, [sorted(by_length[x])[len(by_length[x]) // 2] for x in xs], style, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (keys / tokens)")
    ax.set_ylabel("median latency (us)")
    ax.set_title("Latency against sequence length")
    if series:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def roofline(records: list[Record], ceilings: dict[str, float] | None = None) -> Any:
    """Achieved TFLOP/s against arithmetic intensity; calibrated ceilings (peak TFLOP/s, bandwidth GB/s) when
    given, otherwise the plot says none were calibrated for this device."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_backend: dict[str, list[tuple[float, float]]] = {}
    for r, t in _timed(records):
        if t.tflops and t.bytes:
            by_backend.setdefault(r.case.backend, []).append((t.flops / t.bytes, t.tflops))
    for backend, points in sorted(by_backend.items()):
        ax.scatter([p[0] for p in points], [p[1] for p in points], label=backend, s=14)
    if ceilings and ceilings.get("tflops") and ceilings.get("gbps"):
        xs = [2.0**i for i in range(-4, 12)]
        ax.plot(xs, [min(ceilings["tflops"], x * ceilings["gbps"] / 1e3) for x in xs], "k--", label="ceiling")
    else:
        ax.text(
            0.02,
            0.95,
            "no calibrated ceilings for this device (harness calibrate)",
            transform=ax.transAxes,
            fontsize=7,
            va="top",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title("Roofline")
    if by_backend:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


DTYPE_ORDER = ("float64", "float32", "float16", "bfloat16")


def error_vs_dtype(records: list[Record]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_backend: dict[str, dict[str, float]] = {}
    for r in records:
        metrics = r.parity.metrics if r.parity is not None else None
        if metrics is None:
            continue
        worst = by_backend.setdefault(r.case.backend, {})
        worst[r.case.dtype] = max(worst.get(r.case.dtype, 0.0), metrics.rel_l2)
    dtypes = [d for d in DTYPE_ORDER if any(d in w for w in by_backend.values())]
    for i, (backend, worst) in enumerate(sorted(by_backend.items())):
        xs = [dtypes.index(d) + 0.08 * (i - len(by_backend) / 2) for d in dtypes if d in worst]
        ax.scatter(
            xs,
            [max(worst[d], 1e-17) for d in dtypes if d in worst],
            label=backend + (" (simulated)" if any(r.simulated for r in records if r.case.backend == backend) else ""),
        )
    ax.set_xticks(range(len(dtypes)), dtypes)
    ax.set_yscale("log")
    ax.set_ylabel("worst rel_l2 against float64")
    ax.set_title("Error against dtype")
    if by_backend:
        ax.legend(fontsize=7)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return fig


PLOTS = {"latency": latency_vs_length, "roofline": roofline, "error": error_vs_dtype}


def render(fig: Any, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
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
