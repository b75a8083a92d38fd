"""Reports keep a quantized case's two errors apart: the kernel's (against the format's emulation, the verdict)
and the format's (against the unquantized function): the run summary (one line per format, text and JSON), the
rows table (a format-error column) and the paper table (a footnote per backend)."""

from __future__ import annotations

import json
import re
from pathlib import Path


def _run(harness_cli, tmp_path: Path, *extra: str):
    out = tmp_path / "q.jsonl"
    run = harness_cli(
        "run", "-b", "torch-cpu", "-w", "linear.projection", "--preset", "tiny", "--shape", "proj",
        "--dtype", "w8a8,fp8,bfloat16", "--seeds", "0", "--distribution", "normal", "--parity-only", *extra,
        out=out,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    return run, out


def _figures(text: str, fmt: str) -> tuple[float, float]:
    m = re.search(rf"{fmt}\s+worst rel_l2: kernel ([0-9.e-]+) vs emulation, format ([0-9.e-]+) vs unquantized", text)
    assert m, text
    return float(m.group(1)), float(m.group(2))


def test_summary_shows_kernel_and_format_error_per_format(harness_cli, tmp_path: Path) -> None:
    run, _ = _run(harness_cli, tmp_path)
    records = {r["case"]["dtype"]: r for r in run.records if "case" in r}
    for fmt in ("w8a8", "fp8"):
        kernel, error = _figures(run.output, fmt)
        parity = records[fmt]["parity"]
        assert kernel == float(f"{parity['metrics']['rel_l2']:.2g}")
        assert error == float(f"{parity['format_error']['rel_l2']:.3g}") and error > 3 * kernel
    assert not re.search(r"bfloat16\s+worst rel_l2: kernel", run.output)  # only quantized formats get a line
    as_json = harness_cli(
        "run", "-b", "torch-cpu", "-w", "linear.projection", "--preset", "tiny", "--shape", "proj",
        "--dtype", "w8a8", "--seeds", "0", "--distribution", "normal", "--parity-only", "--summary-format", "json",
        out=tmp_path / "j.jsonl",
    )  # fmt: skip
    summary = json.loads(as_json.output.strip().splitlines()[-1])
    formats = summary["backends"][0]["formats"]["w8a8"]
    assert formats["format_rel_l2"] > 3 * formats["kernel_rel_l2"] > 0


def test_report_rows_and_paper_table_show_the_format_error_apart(harness_cli, tmp_path: Path) -> None:
    run, out = _run(harness_cli, tmp_path)
    fp8 = next(r for r in run.records if r.get("case", {}).get("dtype") == "fp8")
    fmt_err = f"{fp8['parity']['format_error']['rel_l2']:.3g}"
    rows = harness_cli("report", str(out)).output
    header = next(line for line in rows.splitlines() if line.startswith("| case"))
    assert "format error rel_l2 (vs unquantized)" in header and "kernel vs emulation" in header
    fp8_row = next(line for line in rows.splitlines() if "| fp8 |" in line)
    cells = [c.strip() for c in fp8_row.split("|")]
    titles = [c.strip() for c in header.split("|")]
    assert cells[titles.index("format error rel_l2 (vs unquantized)")] == fmt_err
    bf16_row = next(line for line in rows.splitlines() if "| bfloat16 |" in line)
    assert [c.strip() for c in bf16_row.split("|")][titles.index("format error rel_l2 (vs unquantized)")] == "-"
    paper = harness_cli("report", str(out), "--table", "paper").output
    note = next(line for line in paper.splitlines() if line.startswith("Quantized formats"))
    assert f"torch-cpu {fp8['parity']['format_error']['rel_l2']:.2e} (linear.projection proj fp8)" in note
    csv = harness_cli("report", str(out), "--table", "paper", "--format", "csv").output.splitlines()
    assert csv[0].endswith(",format_rel_l2") and all(line.endswith(",") for line in csv[1:] if ",bfloat16," in line)
