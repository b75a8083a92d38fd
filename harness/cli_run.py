"""`harness run`: the options, turned into a RunRequest for harness.launch (which plans, runs and summarizes)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from harness.cli_common import bad_input_exits, plugin_option, split_values
from harness.names import DEFAULT_AGAINST_RATIO, DISTRIBUTIONS, DTYPE_NAMES
from harness.suites import BUILTIN_SUITES, SuiteError, parse_threads, resolve_suite, resolve_threads


@click.command("run")
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
    "--backend-option",
    "backend_options",
    multiple=True,
    metavar="[BACKEND:]KEY=VALUE",
    help="A backend's own setting (harness list shows them), e.g. tf32=1 or cuda:graphs=0; without BACKEND: every "
    "selected backend that declares KEY. Repeatable.",
)
@click.option(
    "--graphs/--no-graphs",
    default=None,
    help="Alias of --backend-option graphs=1/0 where a backend takes it (cuda: time by CUDA-graph replay, on by "
    "default; ops that cannot be captured fall back to events, and the record says which).",
)
@click.option(
    "--cold-cache", is_flag=True, help="Alias of --backend-option cold_cache=1 (cuda: flush L2 before every call)."
)
@click.option(
    "--allow-tf32",
    is_flag=True,
    help="Alias of --backend-option tf32=1 (cuda: float32 matmuls on TF32; off by default; records keep it).",
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
    backend_options: tuple[str, ...],
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
    with bad_input_exits():
        lists = {
            "workloads": workloads,
            "backends": backends,
            "dtypes": dtypes,
            "presets": presets,
            "shapes": shapes,
            "inputs": distributions,
        }
        chosen = _suite(suite, lists, seeds, threads)
        timing = chosen.timing if time_budget is None else replace(chosen.timing, budget_s=time_budget)
        aliases = {"graphs": graphs, "cold_cache": cold_cache or None, "tf32": allow_tf32 or None}
        flags = {key: value for key, value in aliases.items() if value is not None}
        backend_settings = _backend_options(chosen, plugins, backend_options, flags, against)
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
            backend_options=backend_settings,
        )
        request = RunRequest(
            chosen,
            options,
            plugins=tuple(split_values(plugins)),
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


def _suite(name: str, lists: dict[str, tuple[str, ...]], seeds: str | None, threads: str | None) -> Any:
    """The named suite with the command line's overrides (`lists`: suite field -> the option's values); bad
    values raise SuiteError (exit 2)."""
    chosen = resolve_suite(name)
    overrides: dict[str, Any] = {field: tuple(split_values(values)) for field, values in lists.items() if values}
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


def _backend_options(
    chosen: Any, plugins: tuple[str, ...], items: tuple[str, ...], flags: dict[str, bool], against: str | None
) -> dict[str, dict[str, str]]:
    """Backend name -> option -> raw value for the selected backends (and an --against backend): the suite's
    settings and the alias flags where a backend declares them, then --backend-option, each checked here."""
    from harness.backend_options import OptionSetting, resolve
    from harness.cli_common import load_registry

    registry = load_registry(plugins)
    selected = registry.select(chosen.backends)
    if against is not None and against in registry.names() and against not in selected:
        selected.append(against)
    settings = [
        replace(OptionSetting.parse(item, source="suite backend_options"), alias=True)
        for item in chosen.backend_options
    ]
    settings += [OptionSetting(key, str(int(value)), alias=True) for key, value in flags.items()]
    settings += [OptionSetting.parse(item) for item in items]  # not split on commas: a value may hold one
    return resolve(registry, selected, settings)


def _budget_overrides(items: tuple[str, ...]) -> dict[str, float]:
    from dataclasses import fields

    from harness.parity import Budget

    names = {f.name for f in fields(Budget)}
    overrides = {}
    for item in split_values(items):
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise SuiteError(f"--budget {item!r}: expected FIELD=VALUE with FIELD one of: {', '.join(sorted(names))}")
        try:
            overrides[key] = float(value)
        except ValueError:
            raise SuiteError(f"--budget {item!r}: {value!r} is not a number") from None
    return overrides
