"""The paper table model (harness.paper_table) and its writers, on the committed H100 paper run: rows per workload
and shape with dimensions, columns per backend, bold only where intervals separate, skipped backends in a note."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness import paper_formats
from harness.paper_table import PaperTable, build_tables, separated_best
from harness.results import Record
from tests.conftest import compile_latex

PAPER = Path(__file__).resolve().parent.parent / "results" / "cuda" / "paper.jsonl"


def _raw() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAPER.read_text().splitlines() if line.strip()]


def _records(raw: list[dict[str, Any]]) -> list[Record]:
    return [Record.from_dict(r) for r in raw]


def _table(tables: list[PaperTable], label: str) -> PaperTable:
    return next(t for t in tables if label in t.dim_labels)


def test_rows_per_workload_and_shape_with_dimensions_and_columns_per_backend() -> None:
    tables = build_tables(_records(_raw()), baseline="cuda")
    attention, moe = _table(tables, "Hq/Hkv"), _table(tables, "E")
    assert len(tables) == 2
    assert attention.dim_labels == ("B", "Hq/Hkv", "Sq/Skv", "D", "W")  # W: one row has a window
    assert attention.backends == ("cuda", "cuda-cudnn", "cuda-flash", "cuda-efficient")
    assert [r.workload for r in attention.rows] == [
        "attention.chunked_prefill",
        "attention.decode",
        "attention.prefill",
        "attention.sliding_window",
    ]
    decode = next(r for r in attention.rows if r.workload == "attention.decode")
    assert decode.dims == ("8", "32/8", "1/32768", "128", "")
    assert moe.dim_labels == ("T", "H", "F", "E", "k") and moe.backends == ("cuda",)
    assert {(r.workload, r.shape) for r in moe.rows} == {
        (w, s) for w in ("moe.route", "moe.experts", "moe.layer") for s in ("mixtral", "qwen3-moe")
    }  # four MoE shapes per workload stay apart
    qwen = next(r for r in moe.rows if r.shape == "qwen3-moe")
    assert qwen.dims == ("8192", "2048", "768", "128", "8")
    cell = decode.cells["cuda"]
    assert attention.unit == "ms" and cell.median == pytest.approx(0.3624, abs=1e-3)
    assert cell.low <= cell.median <= cell.high and cell.throughput_unit == "TB/s"  # decode is memory-bound
    prefill = next(r for r in attention.rows if r.workload == "attention.prefill")
    assert prefill.cells["cuda"].throughput_unit == "TFLOP/s" and prefill.cells["cuda"].roofline_pct > 50
    assert prefill.cells["cuda-flash"].speedup == pytest.approx(
        prefill.cells["cuda"].median / prefill.cells["cuda-flash"].median
    )
    assert prefill.cells["cuda"].speedup is None  # no speedup of the baseline against itself


def _set_interval(raw: list[dict[str, Any]], key: str, median_us: float, low_us: float, high_us: float) -> None:
    rec = next(r for r in raw if r["case"]["key"] == key)
    rec["timing"] |= {"median_ns": median_us * 1e3, "ci95_low_ns": low_us * 1e3, "ci95_high_ns": high_us * 1e3}


DECODE = "attention.decode/real/llama3-8b/bfloat16/normal/seed0@"


def test_bold_only_where_the_best_interval_separates_from_every_other() -> None:
    raw = _raw()
    for backend, (med, lo, hi) in {
        "cuda": (100.0, 99.0, 101.0),
        "cuda-cudnn": (100.5, 100.8, 102.0),  # median behind, but its interval starts below cuda's high
        "cuda-flash": (200.0, 199.0, 201.0),
        "cuda-efficient": (300.0, 299.0, 301.0),
    }.items():
        _set_interval(raw, DECODE + backend, med, lo, hi)
    decode = next(r for r in _table(build_tables(_records(raw)), "Hq/Hkv").rows if r.workload == "attention.decode")
    assert not any(c.bold for c in decode.cells.values())  # best by median alone, within noise: not bold
    _set_interval(raw, DECODE + "cuda-cudnn", 100.5, 101.5, 102.0)
    decode = next(r for r in _table(build_tables(_records(raw)), "Hq/Hkv").rows if r.workload == "attention.decode")
    assert [b for b, c in decode.cells.items() if c.bold] == ["cuda"]
    assert separated_best({"a": (1.0, 0.9, 1.1), "b": (2.0, None, None)}) is None  # no interval: no claim
    assert separated_best({"a": (1.0, 0.9, 1.1)}) is None  # nothing to beat


def test_invalid_timing_is_never_ranked_and_skipped_backends_go_to_one_note() -> None:
    raw = _raw()
    bad = next(r for r in raw if r["case"]["key"] == DECODE + "cuda")
    bad["timing"] |= {"valid": False, "invalid_reason": "memo-cheat", "median_ns": 1.0, "ci95_high_ns": 2.0}
    skip = copy.deepcopy(bad) | {"status": "skipped", "reason": "onnxruntime is not installed", "timing": None}
    skip["case"] = skip["case"] | {"backend": "ort-cuda", "key": DECODE + "ort-cuda"}
    skip["parity"] = None
    tables = build_tables(_records([*raw, skip]))
    attention = _table(tables, "Hq/Hkv")
    decode = next(r for r in attention.rows if r.workload == "attention.decode")
    assert decode.cells["cuda"].invalid == "memo-cheat" and decode.cells["cuda"].median is None
    assert not decode.cells["cuda"].bold
    assert "ort-cuda" not in attention.backends and attention.left_out == ("ort-cuda (onnxruntime is not installed)",)
    md = paper_formats.to_markdown(tables)
    assert "invalid" in md and "Not in the table (skipped on every row): ort-cuda" in md
    assert md.count("ort-cuda") == 1  # one note, no column


def test_writers_render_the_same_model() -> None:
    tables = build_tables(_records(_raw()), baseline="cuda")
    tex = paper_formats.to_latex(tables)
    assert tex.count(r"\begin{tabular}") == 2 and r"\toprule" in tex and r"\cmidrule" in tex
    for block in tex.split(r"\begin{tabular}")[1:]:
        spec = re.match(r"\{([lr]+)\}", block).group(1)
        body = block[block.index(r"\toprule") : block.index(r"\bottomrule")]
        rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
        spans = [row.count("&") + sum(int(n) - 1 for n in re.findall(r"multicolumn\{(\d+)\}", row)) for row in rows]
        assert rows and set(spans) == {len(spec) - 1}  # every row spans every column
    assert "e+" not in tex and "e-0" in tex  # fixed-decimal latency; the errors (footnote) in scientific notation
    assert r"ms [95\% CI]" in tex and "TFLOP/s" in tex and "32/8" in tex and "1/32768" in tex
    assert r"\textbf{0.362} [0.362, 0.363]" in tex  # decode: cuda's interval is below the others'
    assert "worst rel\\_l2: cuda 2.30e-03" in tex
    csv_lines = paper_formats.to_csv(tables).splitlines()
    assert len(csv_lines) == 1 + 4 * 4 + 6  # header, attention rows x backends, MoE rows
    assert "B=8 Hq/Hkv=32/8 Sq/Skv=1/32768 D=128" in paper_formats.to_csv(tables)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed here")
def test_paper_latex_compiles(tmp_path: Path) -> None:
    table = paper_formats.to_latex(build_tables(_records(_raw()), baseline="cuda"))
    compile_latex(table, tmp_path)


def test_markdown_rows_report_summarizes_skip_rows_in_one_note() -> None:
    from harness.report import render

    raw = _raw()
    skips = []
    for i, backend in enumerate(("ort-cuda", "ascend") * 5):
        rec = copy.deepcopy(raw[i]) | {"status": "skipped", "reason": f"{backend} is unavailable", "timing": None}
        rec["case"] = rec["case"] | {"backend": backend, "key": rec["case"]["key"] + f"-{backend}"}
        skips.append(rec | {"parity": None})
    md = render(_records(raw + skips), "md")
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + len(raw)  # header + the rows that ran; no skip row
    assert "6 skipped rows not shown (ort-cuda 3, ascend 3)" in md  # seeds fold: 10 records, 6 rows
    assert md.count("is unavailable") == 2
