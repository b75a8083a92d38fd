"""`harness run`: its options; harness.run_flags turns them into a RunRequest for harness.launch (which plans,
runs and summarizes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.cli_common import bad_input_exits, plugin_option
from harness.names import DEFAULT_AGAINST_RATIO, DISTRIBUTIONS, DTYPE_NAMES
from harness.suites import BUILTIN_SUITES


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
@click.option(
    "-b",
    "--backend",
    "backends",
    multiple=True,
    help="Backend names, 'all', or 'devices' (every backend on an accelerator); repeat or comma-separate.",
)
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
    help="Override a parity budget field for every case: rel_l2, worst_row_rel_l2, atol, rtol, max_outside; "
    "format_error.FIELD judges a quantized case's format error alone.",
)
@click.option(
    "--layerwise",
    is_flag=True,
    help="LLM workloads: localize the first layer and op whose own error exceeds its budget.",
)
@click.option(
    "--invariance",
    is_flag=True,
    help="Attention, MoE, LLM: also run each batch row (token subset, shorter chunk) alone and record whether the "
    "output is bitwise the same (costs extra calls; a difference is reported, not failed).",
)
@click.option(
    "--require-invariance",
    is_flag=True,
    help="Implies --invariance; a part whose output differs from the whole batch's fails the case.",
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
    default=None,
    help="With --isolate: seconds a case may run (its process's start-up not counted) before it is killed and "
    "recorded as timeout (default 600).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: each case group a task on a Ray cluster (GPU, NPU or CPU resources by backend), records streamed "
    "home to the one JSONL; needs the [ray] extra.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="With --executor ray: the cluster to join (default: RAY_ADDRESS, a `ray start` cluster on this machine, "
    "or a new local instance).",
)
@click.option(
    "--ray-retries",
    type=click.IntRange(min=0),
    default=None,
    help="With --executor ray: resubmit a dead task's unfinished cases this many times before the case in flight "
    "is recorded as crashed (default 0).",
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
@click.option(
    "--summary-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: print the summary as one JSON object on stdout (per backend its counts, verdict, worst case and "
    "--against port verdict; the results file), for CI bots; the exit code is the same.",
)
@plugin_option
def run_cmd(**flags: Any) -> None:
    """Run a suite (flags override its selection), stream records to JSONL, print a summary per backend."""
    from harness.cli_common import answer_unexpected
    from harness.supervise import run_supervised

    if flags["isolate"]:  # each case in its own process already: a crash costs one record
        _run(flags)
    else:  # watched from a parent process (forked before torch loads): a crash is answered with one line
        run_supervised(lambda: _run(flags), answer_unexpected)


def _run(flags: dict[str, Any]) -> None:
    from rich.console import Console

    from harness.launch import RunInterruptedError, RunStoppedError, launch
    from harness.ranks import RankInfo
    from harness.run_flags import RunFlags

    console = Console(stderr=True)
    with bad_input_exits():
        request = RunFlags(**flags).request()
        ranks = RankInfo.from_env()  # under torchrun: this rank's share of the cases (harness/sharded.py)
        try:
            if ranks is None:
                outcome = launch(request, console)
            else:
                from harness.sharded import launch_rank

                outcome = launch_rank(request, console, ranks)
        except RunInterruptedError as exc:
            console.print(str(exc))
            sys.exit(130)
        except RunStoppedError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(3)
        except SystemExit as exc:  # a plugin's or library's exit while the run was set up: not the run's verdict
            where = "while the run was set up (plugins, backend options, planning)"
            click.echo(f"error: nothing ran: something called sys.exit({exc.code!r}) {where}", err=True)
            sys.exit(3)
    click.echo(outcome.summary, nl=False)
    sys.exit(outcome.exit_code)
