"""harness compare's ratio table: printed for every case timed in both runs (not only on a regression), a change
marked only where the ratio's CI excludes 1 beyond the threshold, invalid timings listed apart; LaTeX and CSV from
the same model; the ratio plot has one point per case."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.compare import compare_runs
from harness.compare_formats import to_latex, to_markdown
from harness.results import CaseRef, Record, TimingRecord


def _timed(workload: str, shape: str, samples: np.ndarray | None, *, valid: bool = True, ci=None) -> Record:
    key = f"{workload}/tiny/{shape}/float32/normal/seed0@torch-cpu"
    data: dict = {"median_ns": float(np.median(samples)) if samples is not None else ci[1]}
    if samples is not None:
        data["samples_ns"] = [float(x) for x in samples]
    if ci is not None:
        data["ci95_low_ns"], data["median_ns"], data["ci95_high_ns"] = ci
    if not valid:
        data |= {"valid": False, "invalid_reason": "the timed output differed from the parity output"}
    return Record("r", "t", CaseRef.from_dict({"key": key}), "passed", timing=TimingRecord(data))


def _runs() -> tuple[list[Record], list[Record]]:
    """OLD and NEW: `same` unchanged, `tight` 30% slower with tight samples, `noisy` 30% slower by its medians but
    with samples so spread the CI holds 1, `small` 2% slower (significant, under the 5% threshold), `cheat` an
    invalid NEW timing, and a MoE case 20% faster."""
    rng = np.random.default_rng(7)
    base = 100_000.0

    def tight(scale: float) -> np.ndarray:
        return base * scale * (1 + 0.01 * rng.standard_normal(200))

    def noisy(scale: float) -> np.ndarray:
        return base * scale * rng.lognormal(0.0, 0.8, 12)

    old = [
        _timed("attention.decode", "same", tight(1.0)),
        _timed("attention.decode", "tight", tight(1.0)),
        _timed("attention.decode", "noisy", noisy(1.0)),
        _timed("attention.decode", "small", tight(1.0)),
        _timed("attention.decode", "cheat", tight(1.0)),
        _timed("moe.layer", "mixtral", tight(1.0)),
    ]
    new = [
        _timed("attention.decode", "same", tight(1.0)),
        _timed("attention.decode", "tight", tight(1.3)),
        _timed("attention.decode", "noisy", noisy(1.0)),
        _timed("attention.decode", "small", tight(1.02)),
        _timed("attention.decode", "cheat", tight(0.01), valid=False),
        _timed("moe.layer", "mixtral", tight(0.8)),
    ]
    # `noisy`'s medians differ by chance: make its point ratio large, as a mark-by-point rule would flag.
    new[2] = _timed("attention.decode", "noisy", np.asarray(new[2].timing.samples_ns) * 1.4 * old[2].timing.median_ns
                    / new[2].timing.median_ns)  # fmt: skip
    return old, new


def _table_rows(text: str) -> dict[str, str]:
    """case shape -> its ratio-table line."""
    return {m.group(1): line for line in text.splitlines() if (m := re.search(r"\| tiny/(\w+) float32 \|", line))}


def test_every_case_gets_a_row_and_only_a_ci_clear_of_one_is_marked() -> None:
    old, new = _runs()
    result = compare_runs(old, new)
    by_case = {r.label.split()[0].split("/")[1]: r for r in result.ratios}
    noisy = by_case["noisy"]
    assert noisy.ratio > 1.3 and noisy.low < 1 < noisy.high  # the point ratio alone would be "slower"
    text = to_markdown(result)
    rows = _table_rows(text)
    assert set(rows) == {"same", "tight", "noisy", "small", "mixtral"}  # every valid case, cheat apart
    assert rows["tight"].endswith("| slower |") and re.search(r"\*\*1\.[23]\d\d\*\*", rows["tight"])
    assert rows["mixtral"].endswith("| faster |") and re.search(r"\*\*0\.[78]\d\d\*\*", rows["mixtral"])
    for case in ("same", "noisy", "small"):
        assert rows[case].endswith("| - |") and "**" not in rows[case], rows[case]
    assert re.search(r"\| 1\.\d{3} \[1\.\d{3}, 1\.\d{3}\] \|", rows["small"])  # CI excludes 1, under threshold
    # The invalid timing is listed apart, never ranked.
    apart = text[text.index("Not ranked") :]
    assert "cheat" in apart and "differed" in apart and "cheat" not in "".join(rows.values())
    assert [c.key.split("/")[2] for c in result.regressions] == ["tight"]


def test_the_table_is_printed_without_any_regression(harness_cli, tmp_path: Path) -> None:
    old, new = _runs()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in old))
    b.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in old))  # NEW = OLD: nothing changed
    same = harness_cli("compare", str(a), str(b))
    assert same.exit_code == 0
    rows = _table_rows(same.output)
    assert set(rows) == {"same", "tight", "noisy", "small", "cheat", "mixtral"}  # all valid in OLD
    assert all(re.search(r"\| 1\.000 \[0\.\d{3}, \d\.\d{3}\] \| - \|$", line) for line in rows.values()), rows
    b.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in new))
    slower = harness_cli("compare", str(a), str(b))
    assert slower.exit_code == 1 and "**slower**" in slower.output  # exit codes as before
    tex = harness_cli("compare", str(a), str(b), "--format", "latex")
    assert tex.exit_code == 1 and tex.output.startswith("% requires") and "1 regression(s)" in tex.output  # stderr
    csv_text = [ln for ln in harness_cli("compare", str(a), str(b), "--format", "csv").output.splitlines() if "," in ln]
    assert len(csv_text) == 1 + 6 and csv_text[0].startswith("key,workload")  # every case, the invalid one too
    bad = harness_cli("compare", str(a), str(b), "--labels", "onlyone")
    assert bad.exit_code == 2
    to_file = harness_cli("compare", str(a), str(b), "--format", "latex", "-o", str(tmp_path / "t.tex"))
    assert to_file.exit_code == 1 and (tmp_path / "t.tex").read_text() == tex.output.split("1 regression(s)")[0]
    assert "\\begin{tabular}" not in to_file.output  # -o: the file alone, as harness report -o
    md_file = harness_cli("compare", str(a), str(b), "-o", str(tmp_path / "c.md"))
    assert md_file.exit_code == 1 and "**slower**" in (tmp_path / "c.md").read_text()
    assert md_file.output.strip() == f"1 regression(s): see {tmp_path / 'c.md'}"


def test_intervals_stand_in_for_absent_samples() -> None:
    old = [_timed("attention.decode", "gqa", None, ci=(95.0, 100.0, 105.0))]
    apart = [_timed("attention.decode", "gqa", None, ci=(130.0, 140.0, 150.0))]
    overlap = [_timed("attention.decode", "gqa", None, ci=(100.0, 140.0, 300.0))]
    (clear,) = compare_runs(old, apart).ratios
    assert clear.change == "slower" and clear.low == pytest.approx(130 / 105) and clear.p is None
    (wide,) = compare_runs(old, overlap).ratios
    assert wide.change == "" and wide.low < 1


def test_latex_is_booktabs_grouped_by_workload() -> None:
    tex = to_latex(compare_runs(*_runs(), labels=("v1.0", "v1_1")))
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    body = tex[tex.index(r"\toprule") : tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert all(row.count("&") == 5 for row in rows)
    assert body.count(r"\midrule") == 2  # one block per workload
    assert r"v1\_1/v1.0 [95\% CI]" in body and r"($\mu$s)" in body
    assert body.count(r"\textbf{") == 2 and r"$\uparrow$" in body and r"$\downarrow$" in body
    assert "cheat" not in body and "Not ranked" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed here")
def test_latex_compiles(tmp_path: Path) -> None:
    doc = tmp_path / "t.tex"
    table = to_latex(compare_runs(*_runs()))
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}" + table + "\\end{document}")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, capture_output=True, check=False
    )
    assert proc.returncode == 0 and (tmp_path / "t.pdf").exists(), proc.stdout[-2000:]


def test_ratio_plot_has_one_point_per_case_and_a_panel_per_workload(harness_cli, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the report/test extra)")
    from harness import plots

    result = compare_runs(*_runs())
    fig = plots.ratio_plot(result.ratios)
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == ["attention.decode", "moe.layer"]
    points = [(ax.get_title(loc="left"), x) for ax in panels for c in ax.containers for x in c.lines[0].get_xdata()]
    assert len(points) == 5  # the invalid timing is not drawn
    assert sorted(x for _, x in points) == pytest.approx(sorted(r.ratio for r in result.ratios if not r.invalid))
    assert all(any(abs(x - 1.0) < 1e-12 for x in ln.get_xdata()) for ax in panels for ln in ax.lines[-1:])
    old, new = _runs()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in old))
    b.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in new))
    out = harness_cli("compare", str(a), str(b), "--plots", str(tmp_path / "p"), "--plot-format", "svg")
    assert out.exit_code == 1 and (tmp_path / "p" / "ratio.svg").read_bytes().startswith(b"<?xml")


def test_ratio_plot_of_runs_with_no_case_timed_in_both_draws_an_empty_panel_without_warnings() -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the report/test extra)")
    import warnings

    from harness import plots

    old, new = _runs()
    untimed = [Record.from_dict({**r.to_dict(), "timing": None}) for r in new]  # a --parity-only NEW run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's singular-ylim warning leaked into the CLI's output
        fig = plots.ratio_plot(compare_runs(old, untimed).ratios)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["(no case timed in both runs)"]
