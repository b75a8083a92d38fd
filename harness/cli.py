"""The `harness` command line: thin wrappers that parse, call the library, and print.

Exit codes (DESIGN.md): 0 all passed, 1 a parity failure or regression, 2 bad usage or bad input,
3 cases errored or crashed. Only torch-free modules are imported here at start-up, so `harness --help` and
option errors answer at once; each command imports what it uses.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from harness import list_view
from harness.cli_common import (
    DEBUG_KEY,
    HarnessGroup,
    bad_input_exits,
    load_registry,
    plugin_option,
    stdout_console,
    writing,
)
from harness.cli_judge import judge_cmd
from harness.cli_run import run_cmd
from harness.names import REPORT_FORMATS
from harness.suites import BUILTIN_SUITES, SuiteError


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error (default: one line, exit 3).")
@click.pass_context
def main(ctx: click.Context, verbose: int, debug: bool) -> None:
    """Backend-agnostic inference parity and benchmark harness."""
    ctx.meta[DEBUG_KEY] = debug
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command("list")
@plugin_option
def list_cmd(plugins: tuple[str, ...]) -> None:
    """Backends (with availability and reason), workloads and suites."""
    from rich.table import Table

    from harness.backend_options import describe
    from harness.workload import WorkloadRegistry

    with bad_input_exits():
        registry = load_registry(plugins)
        workloads = WorkloadRegistry.discover()
    console = stdout_console()
    if console.width < list_view.TABLE_WIDTH:
        console.out(list_view.render(registry, workloads, console.width), end="", highlight=False)
        return
    table = Table(title="backends", title_justify="left")
    for col in ("name", "state", "reason", "device", "dtypes", "ops", "simulated"):  # at 80 columns: never cut
        table.add_column(col, overflow="fold", no_wrap=col in ("name", "state"))  # "cpu-refe…" names nothing
    for name in registry.names():
        availability = registry.probe(name)
        caps = registry.get(name).capabilities()
        table.add_row(
            name,
            availability.state,
            availability.reason or "",
            caps["device"],
            ", ".join(caps["dtypes"]),  # spaces: rich wraps a long list instead of cutting it short
            ", ".join(caps["ops"]),
            "yes" if caps["simulated"] else "",
        )
    for name, error in registry.load_errors.items():
        table.add_row(name, "broken", error, "", "", "", "")
    console.print(table)
    otable = Table(title="backend options (harness run --backend-option [BACKEND:]KEY=VALUE)", title_justify="left")
    for col in ("option", "backends", "default", "description"):
        otable.add_column(col, overflow="fold")
    for row in describe(registry):
        otable.add_row(*row)
    if otable.row_count:
        console.print(otable)
    wtable = Table(title="workloads", title_justify="left")
    for col in ("name", "op", "presets (shapes)", "description"):
        wtable.add_column(col, overflow="fold", no_wrap=col == "name")
    for name in workloads.names():
        w = workloads.get(name)
        presets = "; ".join(f"{p}: {', '.join(shapes)}" for p, shapes in w.presets.items())
        wtable.add_row(name, w.op, presets, w.description)
    console.print(wtable)
    stable = Table(title="suites", title_justify="left")
    for col in ("name", "description"):
        stable.add_column(col, overflow="fold", no_wrap=col == "name")
    for suite in BUILTIN_SUITES.values():
        stable.add_row(suite.name, suite.description)
    console.print(stable)


@main.command("env")
@plugin_option
def env_cmd(plugins: tuple[str, ...]) -> None:
    """The environment records carry: host, libraries, and each available backend's devices and versions."""
    from harness.results import host_environment

    with bad_input_exits():
        registry = load_registry(plugins)
    backends: dict[str, Any] = {}
    for name in registry.names():
        availability = registry.probe(name)
        if not availability.available:
            backends[name] = {"available": False, "reason": availability.reason}
            continue
        try:
            backends[name] = {"available": True, **registry.create(name).environment()}
        except Exception as exc:
            backends[name] = {"available": True, "error": f"{type(exc).__name__}: {exc}"}
    click.echo(json.dumps({"host": host_environment(), "backends": backends}, indent=2))


@main.command("calibrate")
@click.option("-b", "--backend", "backend_name", required=True, help="The backend to measure (e.g. cuda).")
@click.option("--matmul-n", type=click.IntRange(min=64), default=None, help="Square matmul size (GPU 8192, CPU 1024).")
@click.option("--copy-mib", type=click.IntRange(min=1), default=None, help="Copy size in MiB (GPU 2048, CPU 256).")
@click.option("--time-budget", type=float, default=1.0, show_default=True, help="Seconds of timing per figure.")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to store it (default $HARNESS_CALIBRATION_DIR or ~/.cache/harness/calibration).",
)
@plugin_option
def calibrate_cmd(
    backend_name: str,
    matmul_n: int | None,
    copy_mib: int | None,
    time_budget: float,
    out_dir: Path | None,
    plugins: tuple[str, ...],
) -> None:
    """Measure a device's matmul peaks and copy bandwidth; runs then report % of roofline against them."""
    from rich.console import Console
    from rich.table import Table

    from harness.calibrate import calibrate, save_calibration
    from harness.runner import UsageError
    from harness.timing import TimingConfig

    with bad_input_exits():
        registry = load_registry(plugins)
        registry.get(backend_name)
        availability = registry.probe(backend_name)
        if not availability.available:
            raise UsageError(f"backend {backend_name!r} is unavailable here: {availability.reason}")
        backend = registry.create(backend_name)
    on_cpu = backend.device == "cpu"
    n = matmul_n or (1024 if on_cpu else 8192)
    config = TimingConfig(budget_s=time_budget, warmup_s=min(0.2, time_budget), min_samples=5)
    cal = calibrate(
        backend,
        matmul_n=n,
        copy_bytes=(copy_mib or (256 if on_cpu else 2048)) << 20,
        config=config,
        small_n={"float16": min(n, 256)} if on_cpu else None,  # no fast fp16 on most CPUs (1 GFLOP/s)
    )
    path = save_calibration(cal, out_dir, key=backend.calibration_key())
    table = Table(title=f"{backend_name} on {cal.device_name}")
    table.add_column("what")
    table.add_column("figure", justify="right")
    for mode, tflops in cal.matmul_tflops.items():
        figure = f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"
        table.add_row(f"{mode} matmul n={cal.matmul_n[mode]}", figure)
    table.add_row(f"copy {cal.copy_bytes >> 20} MiB (read + write)", f"{cal.copy_gbps:.0f} GB/s")
    table.add_row(f"read {cal.copy_bytes >> 20} MiB (sum)", f"{cal.read_gbps:.0f} GB/s")
    Console().print(table)
    click.echo(f"stored: {path}")


main.add_command(run_cmd)
main.add_command(judge_cmd)


@main.command("selftest")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSONL for the records.")
@click.option(
    "--faults",
    "fault_modules",
    multiple=True,
    metavar="MODULE_OR_FILE.py",
    help="A fault plugin module (CHECKS and BACKENDS) instead of the installed ones (entry points harness.faults).",
)
def selftest_cmd(out: Path | None, fault_modules: tuple[str, ...]) -> None:
    """Prove the checks work: every planted fault must be caught, every correct variant must pass (exit 1 if not).

    The faults come from the fault plugin (pip install -e faults/, which make setup does)."""
    from rich.console import Console
    from rich.table import Table

    from harness import selftest
    from harness.results import ResultWriter

    with bad_input_exits():
        plugins = selftest.load_fault_plugins(tuple(fault_modules))
        ranks = selftest.join_ranks()  # under torchrun: every rank runs the checks, rank 0 reports
    out_path = out or selftest.default_output()
    quiet = ranks is not None and not ranks.leader
    console = Console(stderr=True, quiet=quiet)
    table = Table(title="selftest", title_justify="left")
    for col in ("check", "backend", "expected", "cases", "result", "caught by"):
        table.add_column(col, overflow="fold")

    def on_check(o: selftest.Outcome) -> None:
        verdict = ("passed" if o.check.expect == "passes" else "caught") if o.ok else "PROBLEM"
        verdict = "skipped" if o.skipped else verdict
        console.print(f"{verdict:>8}  {o.check.description}" + (f" ({o.skipped})" if o.skipped else ""))
        result = f"skipped: {o.skipped}" if o.skipped else f"{o.good}/{o.cases}" + ("" if o.ok else f": {o.problem}")
        style = None if o.ok else "red"
        table.add_row(
            o.check.description,
            o.check.backend,
            o.check.expect,
            str(o.cases),
            result,
            ", ".join(o.metrics),
            style=style,
        )

    if quiet:
        outcomes = selftest.run_selftest(selftest.DiscardRecords(), on_check, plugins)
    else:
        with writing("--out", out_path):
            writer = ResultWriter(out_path)
        with writer:
            outcomes = selftest.run_selftest(writer, on_check, plugins)
        stdout_console().print(table)
    selftest.leave_ranks()
    bad = [o for o in outcomes if not o.ok]
    skipped = sum(1 for o in outcomes if o.skipped)  # not a hold: nothing was shown
    held = f"{len(outcomes) - len(bad) - skipped} of {len(outcomes)} checks hold" + (
        f", {skipped} skipped" * bool(skipped)
    )
    console.print(f"{held}; records: {out_path}")
    if not bad and skipped == len(outcomes):  # e.g. the CUDA block on a machine whose cuda is not available
        console.print("nothing was checked: every check skipped (exit 3)")
        sys.exit(3)
    sys.exit(1 if bad else 0)


def _fraction(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise SuiteError(f"--fail-on {text!r}: expected a percentage like 5% or a fraction like 0.05") from None
    if value < 0:
        raise SuiteError(f"--fail-on {text!r} must not be negative")
    return value


@main.command("compare")
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--fail-on", default="5%", show_default=True, help="Slowdown that counts as a regression, if significant."
)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.01, show_default=True, help="Significance level.")
@click.option(
    "--error-growth", type=click.FloatRange(min=1), default=2.0, show_default=True, help="rel_l2 growth factor."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.option(
    "--format",
    "fmt_name",
    type=click.Choice(["md", "latex", "csv"]),
    default="md",
    show_default=True,
    help="md: the summary with the ratio table; latex: the ratio table alone (booktabs); csv: a line per case.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the ratio plot (ratio.FORMAT: NEW/OLD per case with its CI) to this folder.",
)
@click.option("--plot-format", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True)
@click.option(
    "--labels", default=None, metavar="OLD,NEW", help="Names of the two runs in tables and plots (default: stems)."
)
def compare_cmd(
    old: Path,
    new: Path,
    fail_on: str,
    alpha: float,
    error_growth: float,
    output: Path | None,
    fmt_name: str,
    plots_dir: Path | None,
    plot_format: str,
    labels: str | None,
) -> None:
    """Compare two result files: the NEW/OLD speed ratio of every case with its 95% CI, significant slowdowns and
    parity regressions (exit 1 if any)."""
    from harness.compare import compare_runs, no_common_hint
    from harness.compare_formats import WRITERS
    from harness.results import ResultsError, read_some_records

    with bad_input_exits():
        threshold = _fraction(fail_on)
        names = _compare_labels(labels, old, new)
        old_records, new_records = read_some_records(old), read_some_records(new)
        result = compare_runs(
            old_records, new_records, fail_on=threshold, alpha=alpha, error_growth=error_growth, labels=names
        )
        if not result.common:
            raise ResultsError(
                f"{old} and {new} share no case (compare matches cases by key, backend included); they differ "
                f"in {no_common_hint(old_records, new_records)}"
            )
    text = WRITERS[fmt_name](result)
    if plots_dir is not None:
        from harness import plots

        path = plots_dir / f"ratio.{plot_format}"
        with writing("--plots", plots_dir):
            plots_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(plots.render(plots.ratio_plot(result.ratios, names), plot_format))
        click.echo(f"wrote {path}", err=True)
    if output is not None:  # the file alone, as harness report -o writes it
        with writing("--output", output):
            output.write_text(text)
    else:
        click.echo(text, nl=False)
    if result.regressions and (fmt_name != "md" or output is not None):
        where = output if fmt_name == "md" else "--format md"
        click.echo(f"{len(result.regressions)} regression(s): see {where}", err=True)
    sys.exit(1 if result.regressions else 0)


def _compare_labels(labels: str | None, old: Path, new: Path) -> tuple[str, str]:
    """--labels OLD,NEW, or the files' stems (OLD and NEW where the stems are equal)."""
    if labels is None:
        return (old.stem, new.stem) if old.stem != new.stem else ("OLD", "NEW")
    parts = [p.strip() for p in labels.split(",")]
    if len(parts) != 2 or not all(parts):
        raise click.BadParameter(f"{labels!r}: give two names, OLD,NEW", param_hint="--labels")
    return parts[0], parts[1]


@main.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt_name", type=click.Choice(REPORT_FORMATS), default="md", show_default=True)
@click.option("--include-simulated-speed", is_flag=True, help="Show timings of simulated backends too.")
@click.option(
    "--baseline", default=None, metavar="BACKEND", help="A speedup column (and geometric means) against this backend."
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the plots (latency, roofline, error) to this folder.",
)
@click.option("--plot-format", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True)
@click.option(
    "--table",
    "table_kind",
    type=click.Choice(["paper", "rows"]),
    default=None,
    help="paper: a row per workload and shape, a column per backend (default for latex); rows: a row per backend "
    "and case with every field (default for md, csv, html).",
)
@click.option(
    "--group-by",
    type=click.Choice(["host"]),
    default=None,
    help="host: the report once per host that ran cases (md: a section each; csv: a host column).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to a file instead of stdout.",
)
def report_cmd(
    files: tuple[Path, ...],
    fmt_name: str,
    include_simulated_speed: bool,
    baseline: str | None,
    plots_dir: Path | None,
    plot_format: str,
    table_kind: str | None,
    output: Path | None,
    group_by: str | None = None,
) -> None:
    """Summarize result files: backend x case with verdict, key errors, median latency, TFLOP/s.

    Formats: md, csv, latex (booktabs, CI, best in bold, geometric mean), html (one self-contained page with the
    plots); --baseline adds speedups to each. A file holding no records exits 2."""
    from harness import report as report_mod
    from harness import report_hosts
    from harness.results import read_some_records

    def render(recs: list[Any]) -> str:
        return report_mod.render(
            recs, fmt_name, include_simulated_speed=include_simulated_speed, baseline=baseline, table=table_kind
        )

    with bad_input_exits():
        records = [r for f in files for r in read_some_records(f)]
        if baseline is not None:
            report_mod.check_baseline(records, baseline, include_simulated_speed=include_simulated_speed)
        text = render(records) if group_by is None else report_hosts.render_by_host(records, fmt_name, render)
    if plots_dir is not None:
        from harness import plots

        with writing("--plots", plots_dir):
            for path in plots.write_plots(records, plots_dir, plot_format):
                click.echo(f"wrote {path}", err=True)
    if output is not None:
        with writing("--output", output):
            output.write_text(text)
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
