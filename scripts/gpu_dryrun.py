"""The CPU stand-in for one command of scripts/gpu_pending.sh (its check mode, GPU_PENDING_CHECK=1): proves in
seconds that the command would start and do what it is meant to on a GPU, so a typo cannot waste a session's
15 minutes of device time.

    python scripts/gpu_dryrun.py PYTHON -m harness.cli run ARGS...   # parse, plan; every workload has cases the
                                                                     # backend class supports (no device touched)
    python scripts/gpu_dryrun.py PYTHON -m harness.cli selftest ARGS # parse, load the named fault plugin
    python scripts/gpu_dryrun.py PYTHON -m harness.cli calibrate ARGS # parse; the backend is on the GPU
    python scripts/gpu_dryrun.py PYTHON -m pytest ARGS...            # the same files, --collect-only
    python scripts/gpu_dryrun.py PYTHON benchmarks/moe_ep.py ARGS    # the same preset and shape on torch-cpu
    python scripts/gpu_dryrun.py PYTHON benchmarks/cuda_bar.py ARGS  # the same options, --dry-run
    python scripts/gpu_dryrun.py --from FILE                         # each line `N NAME COMMAND...` (quoted)

Exit 0 when the command would run, 2 when it is malformed (bad option, unknown shape, missing file), 1 when it
parses but plans nothing a GPU would run (every case of a workload unsupported, zero tests collected)."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fail(code: int, message: str) -> int:
    print(f"gpu_dryrun: {message}", file=sys.stderr)
    return code


def check_run(args: list[str]) -> int:
    """`harness run ARGS`: planned exactly as the CLI plans it; each case asked of its backend's class."""
    import click

    from harness.backend import default_registry
    from harness.cli_run import run_cmd
    from harness.launch import prepare
    from harness.names import BadInputError
    from harness.run_flags import RunFlags

    try:
        with run_cmd.make_context("run", list(args)) as ctx:
            request = RunFlags(**ctx.params).request()
        _, cases = prepare(replace(request, isolate=False))  # planned the same; no spec file left in /tmp
    except click.ClickException as exc:
        return fail(2, f"harness run {' '.join(args)}: {exc.format_message()}")
    except BadInputError as exc:
        return fail(2, f"harness run {' '.join(args)}: {exc}")
    registry = default_registry(request.plugins)
    planned: Counter[str] = Counter()
    supported: Counter[str] = Counter()
    for case in cases:
        cls = registry.get(case.backend)
        planned[case.workload] += 1
        # the class's own supports() on an instance that never ran __init__ (which would touch the device)
        if cls.supports(cls.__new__(cls), case).ok:
            supported[case.workload] += 1
    for workload in sorted(planned):
        print(f"  {workload}: {planned[workload]} cases planned, {supported[workload]} supported by their backend")
    # every -w name or glob (the suite's, when none is given) must reach a case its backend supports
    empty = [p for p in request.suite.workloads if not any(fnmatch.fnmatchcase(w, p) for w in supported)]
    if empty:
        return fail(1, f"no case its backend supports for -w {', '.join(empty)}: harness run {' '.join(args)}")
    return 0


def check_selftest(args: list[str]) -> int:
    """`harness selftest ARGS`: the fault plugin must be named (the GPU machine runs an uninstalled checkout,
    which has no `harness.faults` entry points) and must load."""
    import click

    from harness.backend import default_registry
    from harness.cli import selftest_cmd
    from harness.names import BadInputError
    from harness.selftest import load_fault_plugins

    try:
        with selftest_cmd.make_context("selftest", list(args)) as ctx:
            faults = tuple(ctx.params["fault_modules"])
    except click.ClickException as exc:
        return fail(2, f"harness selftest {' '.join(args)}: {exc.format_message()}")
    if not faults:
        return fail(2, "harness selftest without --faults: an uninstalled checkout has no fault plugin entry points")
    try:
        plugins = load_fault_plugins(faults)
    except BadInputError as exc:
        return fail(2, str(exc))
    registry = default_registry([spec for p in plugins for spec in p.backend_specs])
    checks = [c for p in plugins for c in p.checks]
    cuda = [c.backend for c in checks if registry.get(c.backend).device == "cuda"]
    print(f"  selftest: {len(checks)} checks, on cuda: {', '.join(cuda) or 'none'}")
    return 0 if cuda else fail(1, "no selftest check runs on cuda")


def check_calibrate(args: list[str]) -> int:
    """`harness calibrate ARGS`: parses, and names a registered backend on a GPU."""
    import click

    from harness.backend import RegistryError, default_registry
    from harness.cli import calibrate_cmd

    try:
        with calibrate_cmd.make_context("calibrate", list(args)) as ctx:
            params = ctx.params
        cls = default_registry(params["plugins"]).get(params["backend_name"])
    except (click.ClickException, RegistryError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        return fail(2, f"harness calibrate {' '.join(args)}: {message}")
    print(f"  calibrate: {cls.name} on {cls.device}")
    return 0 if cls.device == "cuda" else fail(1, f"calibrate -b {cls.name} does not measure the GPU")


def check_pytest(python: str, args: list[str]) -> int:
    """`pytest ARGS`: the same files collected (an import error or a missing file fails here)."""
    proc = subprocess.run(
        [python, "-m", "pytest", "--collect-only", "-q", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    # "N tests collected" (-q), or one "FILE: N" line per file when ARGS already has -q (-qq)
    counts = re.findall(r"(\d+) tests? collected", proc.stdout) or re.findall(r"^\S+\.py: (\d+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not counts:
        return fail(2, f"pytest {' '.join(args)} does not collect:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    total = sum(int(n) for n in counts)
    print(f"  pytest: {total} tests collected")
    return 0 if total else fail(1, "pytest collected no test")


def swapped(args: list[str], option: str, value: str) -> list[str]:
    """`args` with OPTION's value replaced (or OPTION VALUE added)."""
    if option in args:
        i = args.index(option)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, option, value]


def check_benchmark(python: str, script: str, args: list[str]) -> int:
    """A benchmark script: its CPU form with the same options (moe_ep on torch-cpu, cuda_bar --dry-run)."""
    name = Path(script).name
    with tempfile.TemporaryDirectory() as tmp:
        if name == "moe_ep.py":
            cpu = swapped(swapped(args, "--device", "cpu"), "--backend", "torch-cpu")
            cpu = swapped(swapped(swapped(cpu, "--warmup", "0"), "--repeats", "1"), "--out", f"{tmp}/ep.json")
        elif name == "cuda_bar.py":
            cpu = [*swapped(args, "--out", f"{tmp}/bar.jsonl"), "--dry-run"]
        else:
            return fail(2, f"no CPU form known for {script}: teach scripts/gpu_dryrun.py one")
        proc = subprocess.run([python, script, *cpu], cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return fail(2, f"{script} {' '.join(cpu)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    print(f"  {name}: its CPU form ran ({' '.join(cpu)})")
    return 0


def check_listed(path: Path) -> int:
    """`--from FILE`: one command a line, `N NAME ARGV...` shell-quoted (gpu_pending.sh's check mode), all checked
    in this one process (a Python start-up per step would make the check slow); the worst exit code."""
    worst = 0
    for line in path.read_text().splitlines():
        n, name, *argv = shlex.split(line)
        print(f"== check step {n} ({name}): {' '.join(argv)}", file=sys.stderr, flush=True)
        code = main(argv)
        if code:
            print(f"== check step {n} ({name}): FAILED (exit {code})", file=sys.stderr, flush=True)
        worst = max(worst, code)
    return worst


def main(argv: list[str]) -> int:
    if argv[:1] == ["--from"] and len(argv) == 2:
        return check_listed(Path(argv[1]))
    if len(argv) < 2:
        return fail(2, "usage: gpu_dryrun.py PYTHON (-m MODULE | SCRIPT) ARGS...")
    python, rest = argv[0], argv[1:]
    if rest[:3] == ["-m", "harness.cli", "run"]:
        return check_run(rest[3:])
    if rest[:3] == ["-m", "harness.cli", "selftest"]:
        return check_selftest(rest[3:])
    if rest[:3] == ["-m", "harness.cli", "calibrate"]:
        return check_calibrate(rest[3:])
    if rest[:2] == ["-m", "pytest"]:
        return check_pytest(python, rest[2:])
    if rest[0].endswith(".py"):
        if not (ROOT / rest[0]).is_file():
            return fail(2, f"no such script: {rest[0]}")
        return check_benchmark(python, rest[0], rest[1:])
    return fail(2, f"no CPU form known for {' '.join(argv)}: teach scripts/gpu_dryrun.py one")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
