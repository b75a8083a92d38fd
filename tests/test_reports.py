"""Paper-ready reports: booktabs LaTeX (structure; compiled where pdflatex exists), HTML rendered in headless
Chromium with its plots visible, plot files in every format."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import compile_latex

pytest.importorskip("matplotlib", reason="plots need matplotlib (the report/test extra)")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from harness.cli import main

    out = tmp_path_factory.mktemp("runs") / "run.jsonl"
    args = [
        "run",
        "-b",
        "cpu-reference,torch-cpu",
        "-w",
        "attention.prefill,attention.decode,moe.layer",
        "--preset",
        "tiny",
        "--dtype",
        "float32,bfloat16",
        "--distribution",
        "normal",
        "--time-budget",
        "0.02",
        "--out",
        str(out),
        "--no-table",
        "--time-oracles",  # cpu-reference is the LaTeX baseline: it must be timed
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_latex_is_a_booktabs_table_with_ci_bold_best_speedups_and_geometric_mean(harness_cli, run_file: Path) -> None:
    result = harness_cli("report", str(run_file), "--format", "latex", "--table", "rows", "--baseline", "cpu-reference")
    assert result.exit_code == 0
    tex = result.output
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    body = tex[tex.index(r"\toprule") : tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert rows and all(row.count("&") == len(spec) - 1 for row in rows)  # every row has every column
    data = [r for r in rows if "torch-cpu" in r and "Geometric" not in r]
    assert all(re.search(r"\d \[\d[^]]*, \d[^]]*\]", r) for r in data)  # median [95% CI]
    assert r"\textbf{" in body and r"$\times$" in body
    geo = [r for r in rows if r.startswith("Geometric mean")]
    assert {("torch-cpu" in r) for r in geo} == {True, False} and len(geo) == 2
    assert "attention.prefill tiny/gqa" in tex and r"rel\_l2" in tex  # escaped underscores
    bad = harness_cli("report", str(run_file), "--format", "latex", "--baseline", "nosuch")
    assert bad.exit_code == 2 and "--baseline 'nosuch'" in bad.output


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed here")
def test_latex_compiles(harness_cli, run_file: Path, tmp_path: Path) -> None:
    table = harness_cli(
        "report", str(run_file), "--format", "latex", "--table", "rows", "--baseline", "cpu-reference"
    ).output
    compile_latex(table, tmp_path)


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_plot_files(harness_cli, run_file: Path, tmp_path: Path, fmt: str) -> None:
    result = harness_cli("report", str(run_file), "--plots", str(tmp_path), "--plot-format", fmt)
    assert result.exit_code == 0
    for name in ("latency", "roofline", "error"):
        path = tmp_path / f"{name}.{fmt}"
        assert path.stat().st_size > 1000
    head = (tmp_path / f"latency.{fmt}").read_bytes()[:8]
    assert head.startswith({"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[fmt])


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, installed by the test set-up when missing (root and apt-get needed; else skip)."""
    exe = shutil.which("chromium")
    if exe:
        return exe
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "install", "-y", "-q", "chromium"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium"],
    ):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{' '.join(cmd)} timed out")
        if proc.returncode == 0 and shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip(f"could not install chromium from Debian's packages: {proc.stderr[-300:]}")


def test_html_renders_in_headless_chromium_with_its_plots(
    harness_cli, run_file: Path, tmp_path: Path, chromium: str
) -> None:
    page = tmp_path / "report.html"
    assert harness_cli("report", str(run_file), "--format", "html", "-o", str(page)).exit_code == 0
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 3 and "http://" not in html and "https://" not in html
    shot = tmp_path / "shot.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1400,1400",
        page.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]  # [H, W, 3] floats
    # The table is black, white and grey; the plots' lines and markers are coloured: count coloured pixels.
    colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.3
    assert colourful.sum() > 500, f"no plot is visible in the rendered page ({colourful.sum()} coloured pixels)"


def _results_table(page: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The rows table of an HTML report: its headers, and per row its <tr> attributes and cell texts."""
    section = page[page.index('<section id="results">') :]
    section = section[: section.index("</table>")]
    head = section[section.index("<thead>") : section.index("</thead>")]
    body = section[section.index("<tbody>") :]
    rows = [
        (attrs, re.findall(r"<td>(.*?)</td>", cells)) for attrs, cells in re.findall(r"<tr([^>]*)>(.*?)</tr>", body)
    ]
    return re.findall(r"<th>(.*?)</th>", head), rows


def test_html_summary_first_no_empty_column_and_filters_hide_rows(
    harness_cli, run_file: Path, tmp_path: Path, chromium: str
) -> None:
    from harness.report_rows import summarize, table
    from harness.results import read_records

    page = tmp_path / "report.html"
    assert harness_cli("report", str(run_file), "--format", "html", "-o", str(page)).exit_code == 0
    text = page.read_text()
    assert text.index('<section id="summary">') < text.index("<h2>Plots</h2>") < text.index('<section id="results">')
    summary = text[text.index('<section id="summary">') : text.index("</section>")]
    assert "speedup vs torch-cpu" in summary and re.search(r"<td>cpu-reference</td><td>\d+</td>", summary)
    headers, rows = _results_table(text)
    full_header, _ = table(summarize(read_records(run_file)), None)
    assert len(headers) < len(full_header)  # this run leaves some columns empty (--invariance, LLM...)
    for i, name in enumerate(headers):  # every column kept says something on some row
        assert any(cells[i] not in ("-", "") for _, cells in rows), f"column {name!r} is '-' on every row"
    assert {re.search(r'data-backend="([^"]+)"', a).group(1) for a, _ in rows} == {"cpu-reference", "torch-cpu"}
    # Pick backend torch-cpu and dtype bfloat16 in the filters, as a reader would, and read the DOM back.
    script = (
        "<script>for (const [k, v] of [['backend', 'torch-cpu'], ['dtype', 'bfloat16']]) {"
        "const s = document.querySelector(`select[data-filter=${k}]`); s.value = v;"
        "s.dispatchEvent(new Event('change')); }</script>"
    )
    clicked = tmp_path / "clicked.html"
    clicked.write_text(text.replace("</body>", script + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    cmd += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom"]
    dom = subprocess.run([*cmd, clicked.as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    _, after = _results_table(dom)
    assert len(after) == len(rows)
    visible = [a for a, _ in after if "hidden" not in a]
    assert visible and all('data-backend="torch-cpu"' in a and 'data-dtype="bfloat16"' in a for a in visible)
    hidden = [a for a, _ in after if "hidden" in a]
    assert not any('data-backend="torch-cpu"' in a and 'data-dtype="bfloat16"' in a for a in hidden)
    assert re.search(rf'<span id="shown">{len(visible)}</span>', dom)
