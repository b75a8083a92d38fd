"""The `harness` command line: thin wrappers that parse, call the library, and print.

Exit codes (DESIGN.md): 0 all passed, 1 a parity failure or regression, 2 bad usage or bad input,
3 cases errored or crashed. Only torch-free modules are imported here at start-up, so `harness --help` and
option errors answer at once; each command imports what it uses.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.names import DEFAULT_AGAINST_RATIO, DISTRIBUTIONS, DTYPE_NAMES, REPORT_FORMATS, BadInputError
from harness.suites import BUILTIN_SUITES, SuiteError, parse_threads, resolve_suite, resolve_threads

if TYPE_CHECKING:
    from rich.console import Console

    from harness.backend import BackendRegistry

EXIT_USAGE = 2

log = logging.getLogger("harness")


def _split(values: tuple[str, ...]) -> list[str]:
    """Options accept repeats and comma lists alike: -b a,b -b c."""
    return [item.strip() for v in values for item in v.split(",") if item.strip()]


@contextmanager
def _bad_input_exits() -> Iterator[None]:
    try:
        yield
    except BadInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def _stdout_console() -> Console:
    """The terminal's width on a terminal; wide enough for whole tables when piped or captured."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _registry(plugins: tuple[str, ...]) -> BackendRegistry:
    from harness.backend import default_registry

    return default_registry(_split(plugins))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Backend-agnostic inference parity and benchmark harness."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE_OR_FILE.py", help="Load extra backends from a module or file."
)


@main.command("list")
@plugin_option
def list_cmd(plugins: tuple[str, ...]) -> None:
    """Backends (with availability and reason), workloads and suites."""
    from rich.table import Table

    from harness.workload import WorkloadRegistry

    with _bad_input_exits():
        registry = _registry(plugins)
        workloads = WorkloadRegistry.discover()
    console = _stdout_console()
    table = Table(title="backends", title_justify="left")
    for col in ("name", "state", "reason", "device", "dtypes", "ops", "simulated"):
        table.add_column(col)
    for name in registry.names():
        availability = registry.probe(name)
        caps = registry.get(name).capabilities()
        table.add_row(
            name,
            availability.state,
            availability.reason or "",
            caps["device"],
            ",".join(caps["dtypes"]),
            ",".join(caps["ops"]),
            "yes" if caps["simulated"] else "",
        )
    for name, error in registry.load_errors.items():
        table.add_row(name, "broken", error, "", "", "", "")
    console.print(table)
    wtable = Table(title="workloads", title_justify="left")
    for col in ("name", "op", "presets (shapes)", "description"):
        wtable.add_column(col)
    for name in workloads.names():
        w = workloads.get(name)
        presets = "; ".join(f"{p}: {','.join(shapes)}" for p, shapes in w.presets.items())
        wtable.add_row(name, w.op, presets, w.description)
    console.print(wtable)
    stable = Table(title="suites", title_justify="left")
    for col in ("name", "description"):
        stable.add_column(col)
    for suite in BUILTIN_SUITES.values():
        stable.add_row(suite.name, suite.description)
    console.print(stable)


@main.command("env")
@plugin_option
def env_cmd(plugins: tuple[str, ...]) -> None:
    """The environment records carry: host, libraries, and each available backend's devices and versions."""
    from harness.results import host_environment

    with _bad_input_exits():
        registry = _registry(plugins)
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

    with _bad_input_exits():
        registry = _registry(plugins)
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


@main.command("run")
@click.option(
    "--suite", default="smoke", show_default=True, help=f"Built-in suite ({', '.join(BUILTIN_SUITES)}) or a TOML file."
)
@click.option(
    "-w",
    "--workload",
    "workloads",
    multiple=True,
    help="Workload name or glob ('attention.*'); repeat or comma-separate.",
)
@click.option("-b", "--backend", "backends", multiple=True, help="Backend names, or 'all'; repeat or comma-separate.")
@click.option("--dtype", "dtypes", multiple=True, help=f"Case dtypes: {', '.join(DTYPE_NAMES)}.")
@click.option("--preset", "presets", multiple=True, help="Shape presets: tiny, small, real.")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    help="Shape names within the presets (gqa, mqa, llama3-8b, deepseek-v3, ...); with --inputs, the shape "
    "whose mask or routing rule applies to your tensors.",
)
@click.option("--seeds", default=None, help="Comma list of input seeds, e.g. 0,1,2.")
@click.option(
    "--distribution", "distributions", multiple=True, help=f"Input distributions: {', '.join(DISTRIBUTIONS)}."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSONL to append to (default results/runs/RUN_ID.jsonl).",
)
@click.option("--parity-only", is_flag=True, help="Judge parity, skip timing (and the determinism re-runs).")
@click.option(
    "--determinism/--no-determinism",
    default=None,
    help="Run each op twice more and record whether the outputs are bitwise equal (default: on, off with "
    "--parity-only).",
)
@click.option(
    "--threads",
    default=None,
    metavar="N|auto",
    help="Intra-op threads for torch and ONNX Runtime, recorded in every record (default: the suite's, 1 for "
    "smoke and ci; auto = every core this process may use). More threads than free cores make runs slower.",
)
@click.option(
    "--time-oracles", is_flag=True, help="Also time reference backends (cpu-reference): the cost of the naive math."
)
@click.option("--time-budget", type=float, default=None, help="Seconds of steady-state timing per case.")
@click.option(
    "--graphs/--no-graphs",
    default=None,
    help="Device timers: replay captured CUDA graphs of the calls (default on; ops that cannot be captured fall "
    "back to events, and the record says which).",
)
@click.option("--cold-cache", is_flag=True, help="Device timers: flush the L2 cache before every timed call.")
@click.option(
    "--allow-tf32",
    is_flag=True,
    help="cuda: let float32 matmuls use TF32 (off by default; each record keeps the setting).",
)
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Run one workload on your own tensors (safetensors, contract names).",
)
@click.option(
    "--save-outputs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write each case's inputs and outputs as safetensors under DIR.",
)
@click.option(
    "--against",
    default=None,
    metavar="BACKEND_OR_DIR",
    help="Judge by error ratio against a backend, or against outputs saved with --save-outputs.",
)
@click.option(
    "--against-ratio",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_AGAINST_RATIO,
    show_default=True,
    help="With --against: the error a case may have, as a multiple of the baseline's.",
)
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Override a parity budget field for every case: rel_l2, worst_row_rel_l2, atol, rtol, max_outside.",
)
@click.option(
    "--layerwise",
    is_flag=True,
    help="LLM workloads: localize the first layer and op whose own error exceeds its budget.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(file_okay=False, dir_okay=True),
    default=None,
    help="LLM workloads: a checkpoint directory (config.json + safetensors) instead of seeded weights.",
)
@click.option("--isolate", is_flag=True, help="Run each case in its own process: a crash or hang costs one record.")
@click.option(
    "--case-timeout",
    type=click.FloatRange(min=0.1),
    default=600.0,
    show_default=True,
    help="With --isolate: seconds before a case is killed and recorded as timeout.",
)
@click.option(
    "--resume",
    "resume",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Skip the cases already recorded in this JSONL and append the rest to it.",
)
@click.option("--rerun-errors", is_flag=True, help="With --resume: run errored, crashed and timed-out cases again.")
@click.option(
    "--no-table", is_flag=True, help="Print only the final line, not the summary (harness report prints every case)."
)
@plugin_option
def run_cmd(
    suite: str,
    workloads: tuple[str, ...],
    backends: tuple[str, ...],
    dtypes: tuple[str, ...],
    presets: tuple[str, ...],
    shapes: tuple[str, ...],
    seeds: str | None,
    distributions: tuple[str, ...],
    out: Path | None,
    parity_only: bool,
    determinism: bool | None,
    threads: str | None,
    time_oracles: bool,
    time_budget: float | None,
    graphs: bool | None,
    cold_cache: bool,
    allow_tf32: bool,
    inputs_file: str | None,
    save_outputs: Path | None,
    against: str | None,
    against_ratio: float,
    budgets: tuple[str, ...],
    layerwise: bool,
    model_path: str | None,
    isolate: bool,
    case_timeout: float,
    resume: Path | None,
    rerun_errors: bool,
    no_table: bool,
    plugins: tuple[str, ...],
) -> None:
    """Run a suite (flags override its selection), stream records to JSONL, print a summary per backend."""
    from rich.console import Console

    from harness.launch import RunInterruptedError, RunRequest, launch
    from harness.runner import RunOptions

    console = Console(stderr=True)
    with _bad_input_exits():
        chosen = _suite(suite, workloads, backends, dtypes, presets, shapes, seeds, distributions, threads)
        timing = chosen.timing if time_budget is None else replace(chosen.timing, budget_s=time_budget)
        if graphs is not None:
            timing = replace(timing, graphs=graphs)
        if cold_cache:
            timing = replace(timing, cold_cache=True)
        if allow_tf32:
            os.environ["HARNESS_CUDA_TF32"] = "1"  # read by the cuda backends when created; children inherit it
        options = RunOptions(
            parity_only=parity_only,
            timing=timing,
            determinism=not parity_only if determinism is None else determinism,
            threads=resolve_threads(chosen.threads),
            time_oracles=time_oracles,
            save_outputs=save_outputs,
            against=against,
            against_ratio=against_ratio,
            budget_overrides=_budget_overrides(budgets),
            layerwise=layerwise,
            model_path=model_path,
        )
        request = RunRequest(
            chosen,
            options,
            plugins=tuple(_split(plugins)),
            inputs_file=inputs_file,
            out=out,
            resume=resume,
            rerun_errors=rerun_errors,
            isolate=isolate,
            case_timeout=case_timeout,
            summary=not no_table,
        )
        try:
            outcome = launch(request, console)
        except RunInterruptedError as exc:
            console.print(str(exc))
            sys.exit(130)
    click.echo(outcome.summary, nl=False)
    sys.exit(outcome.exit_code)


def _suite(
    name: str,
    workloads: tuple[str, ...],
    backends: tuple[str, ...],
    dtypes: tuple[str, ...],
    presets: tuple[str, ...],
    shapes: tuple[str, ...],
    seeds: str | None,
    distributions: tuple[str, ...],
    threads: str | None,
) -> Any:
    """The named suite with the command line's overrides; bad values raise SuiteError (exit 2)."""
    chosen = resolve_suite(name)
    overrides: dict[str, Any] = {}
    for field_name, values in (
        ("workloads", workloads),
        ("backends", backends),
        ("dtypes", dtypes),
        ("presets", presets),
        ("shapes", shapes),
        ("inputs", distributions),
    ):
        if values:
            overrides[field_name] = tuple(_split(values))
    if seeds is not None:
        try:
            overrides["seeds"] = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise SuiteError(f"--seeds {seeds!r}: expected a comma list of integers, e.g. 0,1,2") from None
    for dist in overrides.get("inputs", ()):
        if dist not in DISTRIBUTIONS:
            raise SuiteError(f"unknown input distribution {dist!r}: not one of: {', '.join(DISTRIBUTIONS)}")
    if threads is not None:
        try:
            overrides["threads"] = parse_threads(threads)
        except SuiteError as exc:
            raise SuiteError(f"--threads: {exc}") from None
    return replace(chosen, **overrides)


def _budget_overrides(items: tuple[str, ...]) -> dict[str, float]:
    from dataclasses import fields

    from harness.parity import Budget

    names = {f.name for f in fields(Budget)}
    overrides = {}
    for item in _split(items):
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise SuiteError(f"--budget {item!r}: expected FIELD=VALUE with FIELD one of: {', '.join(sorted(names))}")
        try:
            overrides[key] = float(value)
        except ValueError:
            raise SuiteError(f"--budget {item!r}: {value!r} is not a number") from None
    return overrides


@main.command("selftest")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSONL for the records.")
def selftest_cmd(out: Path | None) -> None:
    """Prove the checks work: every planted fault must be caught, every correct variant must pass (exit 1 if not)."""
    from rich.console import Console
    from rich.table import Table

    from harness import selftest
    from harness.results import ResultWriter

    out_path = out or selftest.default_output()
    console = Console(stderr=True)
    table = Table(title="selftest", title_justify="left")
    for col in ("check", "backend", "expected", "cases", "result", "caught by"):
        table.add_column(col, overflow="fold")

    def on_check(o: selftest.Outcome) -> None:
        verdict = ("caught" if o.check.expect == "caught" else "passed") if o.ok else "PROBLEM"
        console.print(f"{verdict:>8}  {o.check.description}")
        result = f"{o.good}/{o.cases}" + ("" if o.ok else f": {o.problem}")
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

    with ResultWriter(out_path) as writer:
        outcomes = selftest.run_selftest(writer, on_check)
    _stdout_console().print(table)
    bad = [o for o in outcomes if not o.ok]
    console.print(f"{len(outcomes) - len(bad)} of {len(outcomes)} checks hold; records: {out_path}")
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
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the summary."
)
def compare_cmd(old: Path, new: Path, fail_on: str, alpha: float, error_growth: float, output: Path | None) -> None:
    """Compare two result files: significant slowdowns and parity regressions per case (exit 1 if any)."""
    from harness.compare import compare_runs
    from harness.results import read_records

    with _bad_input_exits():
        threshold = _fraction(fail_on)
        result = compare_runs(
            read_records(old), read_records(new), fail_on=threshold, alpha=alpha, error_growth=error_growth
        )
    text = result.markdown()
    if output is not None:
        output.write_text(text)
    click.echo(text, nl=False)
    sys.exit(1 if result.regressions else 0)


@main.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt_name", type=click.Choice(REPORT_FORMATS), default="md", show_default=True)
@click.option("--include-simulated-speed", is_flag=True, help="Show timings of simulated backends too.")
@click.option("--baseline", default=None, metavar="BACKEND", help="LaTeX: speedups against this backend.")
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the plots (latency, roofline, error) to this folder.",
)
@click.option("--plot-format", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True)
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
    output: Path | None,
) -> None:
    """Summarize result files: backend x case with verdict, key errors, median latency, TFLOP/s.

    Formats: md, csv, latex (booktabs, CI, best in bold, --baseline speedups, geometric mean), html (one
    self-contained page with the plots)."""
    from harness import report as report_mod
    from harness.results import read_records
    from harness.runner import UsageError

    with _bad_input_exits():
        records = [r for f in files for r in read_records(f)]
        if baseline is not None and baseline not in {r["case"]["backend"] for r in records}:
            raise UsageError(f"--baseline {baseline!r}: no records of that backend in the files")
    text = report_mod.render(records, fmt_name, include_simulated_speed=include_simulated_speed, baseline=baseline)
    if plots_dir is not None:
        from harness import plots

        for path in plots.write_plots(records, plots_dir, plot_format):
            click.echo(f"wrote {path}", err=True)
    if output is not None:
        output.write_text(text)
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
