"""What users see of timings (issue 23): an invalid timing is shown with its reason and never ranked, averaged
or plotted (summary, every report format, compare, plots); a speedup over 10x against the case's reference on
the same device class is marked for review, a plausible one is not. Records are written by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import summary
from harness.compare import compare_runs
from harness.report import render
from harness.results import Record, read_records

CHEAT_WHY = "faster than this device can compute: 326 TFLOP/s against a 0.5 TFLOP/s ceiling (x1.5 margin)"
KEY = "attention.prefill/small/gqa/float32/normal/seed0"


def record(
    backend: str,
    median_ns: float,
    *,
    why: str = "",
    device: str = "cpu",
    seed: int = 0,
    simulated: bool = False,
    eager: bool | None = None,
) -> dict[str, Any]:
    """A timed results line as `harness run` writes it (the fields readers use), valid unless `why` is given."""
    samples = [median_ns * f for f in (0.98, 0.99, 1.0, 1.0, 1.01, 1.02, 0.995, 1.005)]
    timing: dict[str, Any] = {
        "method": "perf_counter_ns" if device == "cpu" else f"{device}-events",
        "samples_ns": samples,
        "cpu_ns": samples if device == "cpu" else None,
        "median_ns": median_ns,
        "ci95_low_ns": median_ns * 0.99,
        "ci95_high_ns": median_ns * 1.01,
        "noisy": False,
        "flops": 2.6e8,
        "bytes": 2.5e6,
        "tflops": 2.6e8 / median_ns / 1e3,
        "gbps": 2.5e6 / median_ns,
        "roofline": {"pct": 1234.5 if why else 12.5},
    }
    if why:
        timing |= {"valid": False, "invalid_reason": why}
    else:
        timing["valid"] = True
    return {
        "schema_version": 2,
        "run_id": "r1",
        "time_utc": "2025-01-01T00:00:00.000Z",
        "case": {"key": f"{KEY.replace('seed0', f'seed{seed}')}@{backend}", "op": "attention"},
        "status": "failed" if why else "passed",
        "reason": why,
        "shape_dims": {"skv": 256},
        "simulated": simulated,
        "timing": timing,
        "environment": {"backend": {"device": device} | ({} if eager is None else {"eager_reference": eager})},
    }


def write(path: Path, lines: list[dict[str, Any]]) -> list[Record]:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return read_records(path)


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, list[Record]]:
    """torch-cpu 1 ms; a memo cheat caught at 0.8 us; an honest 2x; a 20x on CPU; a 20x on cuda."""
    path = tmp_path / "run.jsonl"
    lines = [
        record("torch-cpu", 1e6),
        record("memo-cheat", 800.0, why=CHEAT_WHY),
        record("twice", 5e5),
        record("too-fast", 5e4),
        record("gpu-kernel", 5e4, device="cuda"),
    ]
    return path, write(path, lines)


def test_run_summary_leaves_the_invalid_timing_out_of_the_speed_ratios_and_says_why(run) -> None:
    path, records = run
    facts = summary.RunFacts(suite="t", out_path=str(path), seconds=1.0)
    text = summary.render(records, facts, width=200)
    cheat_block = text.split("memo-cheat  ")[1].split("\n\n")[0]
    assert "faster than torch-cpu" not in cheat_block and "slower than" not in cheat_block
    assert "not ranked: 1 invalid timing " in cheat_block
    assert f"speed ratios: 1 invalid timing left out (memo-cheat 1): {CHEAT_WHY}" in text
    assert "2.00x faster than torch-cpu" in text.split("twice  ")[1]
    data = summary.RunSummary(tuple(records), facts, 1).to_dict()
    assert data["invalid_timings"] == [{"case": f"{KEY}@memo-cheat", "reason": CHEAT_WHY}]


def test_an_invalid_baseline_timing_makes_no_ratio(tmp_path: Path) -> None:
    records = write(tmp_path / "r.jsonl", [record("torch-cpu", 1e6, why=CHEAT_WHY), record("twice", 5e5)])
    text = summary.render(records, summary.RunFacts("t", "r.jsonl", 1.0), width=200)
    assert "faster than torch-cpu" not in text and "slower than torch-cpu" not in text


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html"])
def test_every_report_format_shows_the_reason_and_no_figure_of_the_invalid_timing(run, fmt: str) -> None:
    _, records = run
    text = render(records, fmt, baseline="torch-cpu", table="rows")  # the paper table: tests/test_paper_table.py
    shown = {"latex": CHEAT_WHY.replace("%", r"\%"), "html": CHEAT_WHY}.get(fmt, CHEAT_WHY)
    assert shown in text
    rows = text.split("<tr") if fmt == "html" else [line for line in text.splitlines() if not line.startswith("\\par")]
    if fmt == "html":  # the summary's row of the backend first (no figure either), then its row in the results
        summary = next(row for row in rows if "memo-cheat" in row)
        assert not any(f in summary for f in ("0.8", "325", "3125", "1250", "1.25e+03")), summary
        rows = text[text.index("<tbody>", text.index('<section id="results">')) :].split("<tr")
    cheat = next(row for row in rows if "memo-cheat" in row)
    # its 0.8 us, 326 TFLOP/s, 3125 GB/s, 1234.5 % roof and 1250x speedup are in the record, never in a table
    for figure in ("0.8", "325", "3.12e+03", "3125", "1.23e+03", "1234", "1250", "1.25e+03"):
        assert figure not in cheat, (figure, cheat)
    if fmt in ("md", "html"):
        assert f"invalid: {CHEAT_WHY}" in cheat
    if fmt == "latex":
        assert "invalid$^{" in cheat


def test_geometric_means_and_speedups_skip_the_invalid_timing(run) -> None:
    _, records = run
    md = render(records, "md", baseline="torch-cpu")
    means = next(line for line in md.splitlines() if line.startswith("Geometric mean"))
    assert "memo-cheat" in means and "1 row with an invalid timing left out: memo-cheat" in means
    assert "memo-cheat 1" not in means.split("(")[0]  # no mean of its own
    assert "twice 2.00x" in means
    csv_line = next(line for line in render(records, "csv", baseline="torch-cpu").splitlines() if "memo-cheat" in line)
    assert csv_line.endswith(",")  # no speedup figure


def test_implausible_speedup_is_marked_for_review_and_a_plausible_one_is_not(run) -> None:
    _, records = run
    for baseline in (None, "torch-cpu"):  # torch-cpu is the CPU class's reference with or without --baseline
        md = render(records, "md", baseline=baseline)
        row = {b: next(line for line in md.splitlines() if f"| {b} |" in line) for b in ("too-fast", "twice")}
        assert "20x faster than torch-cpu on the same device class (over 10x): check the timing" in row["too-fast"]
        assert "check the timing" not in row["twice"]
        gpu = next(line for line in md.splitlines() if "| gpu-kernel |" in line)
        assert "check the timing" not in gpu  # another device class: 20x faster than a CPU is plausible
        assert "| pass 1/1 |" in row["too-fast"]  # marked for review, not failed
    latex = render(records, "latex", baseline="torch-cpu")  # the paper table
    assert "too-fast: 20x faster than torch-cpu" in latex and "twice: " not in latex
    csv = render(records, "csv")
    assert "check the timing" in next(line for line in csv.splitlines() if "too-fast" in line)


def test_the_oracle_is_the_reference_when_no_eager_backend_was_timed(tmp_path: Path) -> None:
    lines = [record("cpu-reference", 1e6), record("too-fast", 5e4), record("twice", 5e5)]
    md = render(write(tmp_path / "r.jsonl", lines), "md")
    assert "20x faster than cpu-reference on the same device class" in md
    assert md.count("check the timing") == 1


def test_the_reference_is_the_backend_whose_records_declare_it_eager_torch_whatever_its_name(tmp_path: Path) -> None:
    lines = [
        record("my-npu-eager", 1e6, device="npu", eager=True),
        record("npu-kernel", 5e4, device="npu", eager=False),
        record("torch-cpu", 1e6, eager=False),  # its record says it is not: the name alone makes no reference
        record("too-fast", 5e4, eager=False),
    ]
    records = write(tmp_path / "r.jsonl", lines)
    md = render(records, "md")
    row = {b: next(line for line in md.splitlines() if f"| {b} |" in line) for b in ("npu-kernel", "too-fast")}
    assert "20x faster than my-npu-eager on the same device class (over 10x): check the timing" in row["npu-kernel"]
    assert "check the timing" not in row["too-fast"] and md.count("check the timing") == 1
    assert "npu-kernel: 20x faster than my-npu-eager" in render(records, "latex")  # the paper table
    assert "speedup vs my-npu-eager" in render(records, "html")


def test_the_html_summary_holds_speeds_against_eager_torch_of_the_cpu_before_that_of_cuda(tmp_path: Path) -> None:
    for eager in (None, True):  # older records (by name) and declaring ones alike; cuda written first
        lines = [record("cuda", 5e5, device="cuda", eager=eager), record("torch-cpu", 1e6, eager=eager)]
        assert "speedup vs torch-cpu" in render(write(tmp_path / f"r{eager}.jsonl", lines), "html")


def test_records_from_before_the_declaration_keep_their_reference_by_backend_name() -> None:
    from harness.timing_view import device_class, eager_references

    root = Path(__file__).resolve().parents[1] / "results" / "cuda"
    ci, paper = read_records(root / "ci.jsonl"), read_records(root / "paper.jsonl")  # schema 1, no such fields
    assert eager_references(ci) == eager_references(paper) == ["cuda"]
    classes = {r.case.backend: device_class(r) for r in ci if r.timing is not None}
    assert classes == {"cpu-reference": "cpu", "cuda": "cuda", "cuda-flash": "cuda"}


def test_compare_lists_an_invalid_timing_as_not_comparable_and_marks_a_10x_speedup(tmp_path: Path) -> None:
    old = write(tmp_path / "old.jsonl", [record("a", 1e6), record("b", 1e6), record("c", 1e6), record("d", 1e6)])
    new_lines = [record("a", 800.0, why=CHEAT_WHY), record("b", 5e4), record("c", 5e5), record("d", 2e6)]
    new = write(tmp_path / "new.jsonl", new_lines)
    result = compare_runs(old, new)
    kinds = {(c.key.rsplit("@")[1], c.kind) for c in result.changes}
    assert ("a", "not_comparable") in kinds and ("a", "faster") not in kinds
    assert ("b", "check_timing") in kinds and ("c", "check_timing") not in kinds
    assert ("c", "faster") in kinds and ("d", "slower") in kinds
    assert {c.key.rsplit("@")[1] for c in result.regressions} == {"a", "d"}  # a: newly failing (status), not speed
    assert all(c.kind != "slower" for c in result.regressions if c.key.endswith("@a"))
    md = result.markdown()
    assert f"timing invalid in NEW: {CHEAT_WHY}" in md and "20x faster than the old run" in md
    back = compare_runs(new, old)  # an invalid OLD timing: the case got "slower" by 1250x, never a regression
    assert {(c.key.rsplit("@")[1], c.kind) for c in back.changes if c.key.endswith("@a")} >= {("a", "not_comparable")}
    assert not any(c.kind == "slower" and c.key.endswith("@a") for c in back.changes)


def test_plots_leave_the_invalid_timing_out(run) -> None:
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the report/test extra)")
    from harness import plots

    _, records = run
    for make in (plots.latency_vs_length, plots.roofline):
        fig = make(records)
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
        labels = [t.get_text() for legend in legends for t in legend.get_texts()]
        plots._pyplot().close(fig)
        assert any("twice" in label for label in labels) and not any("memo-cheat" in label for label in labels)


def test_device_class_of_records_that_do_not_name_their_device(tmp_path: Path) -> None:
    from harness.timing_view import device_class

    host = record("plugin-op", 1e6)  # a host-CPU timer records CPU time: only host-CPU backends do
    gpu = record("ort-cuda", 1e6, device="cuda") | {"environment": {}}
    gpu["timing"]["method"] = "perf_counter_ns"
    npu = record("ascend", 1e6, device="npu") | {"environment": {}}
    del host["environment"]
    got = [device_class(r) for r in write(tmp_path / "r.jsonl", [host, gpu, npu])]
    assert got == ["cpu", "cuda", "npu"]


def test_the_run_summary_takes_its_speed_reference_from_what_the_records_declare(tmp_path: Path) -> None:
    """A run on a GPU without torch-cpu: its ratios are against the backend declaring itself eager torch on its
    device (cuda), whatever its name; a plugin subclass declares nothing and is ranked against it."""
    from harness.summary import RunFacts, render

    records = write(
        tmp_path / "gpu.jsonl",
        [
            record("my-gpu", 1e6, device="cuda", eager=True),
            record("my-gpu-fused", 5e5, device="cuda", eager=False),
        ],
    )
    text = " ".join(render(records, RunFacts("s", "o", 1.0), 80).split())
    assert "2.00x faster than my-gpu" in text and "the baseline of the speed ratios" in text
