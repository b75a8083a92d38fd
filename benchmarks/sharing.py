"""Sharing a machine: one harness run alone, three one after another, three started at once, side by side.

A parity run on a shared box should finish no later when it shares the cores than when it waits its turn. With
torch's default thread count every run claims every core and three runs at once oversubscribe them; with the
harness's default of one thread per run they share. Both are measured in this one script:

    python benchmarks/sharing.py [--threads 1,auto] [--args "run --suite smoke -b torch-cpu --parity-only"]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_ARGS = "run --suite smoke -b cpu-reference,torch-cpu --parity-only --no-table"


def _command(args: str, threads: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "harness", *shlex.split(args), "--threads", threads, "--out", str(out)]


def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a run failed (exit {proc.returncode}): {' '.join(map(str, proc.args))}")


def measure(args: str, threads: str, workdir: Path) -> tuple[float, float, float]:
    """Seconds for one run alone, three in a row, three at once."""

    def run(tag: str, n: int, together: bool) -> float:
        cmds = [_command(args, threads, workdir / f"{tag}-{threads}-{i}.jsonl") for i in range(n)]
        start = time.perf_counter()
        if together:
            _wait([subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds])
        else:
            for c in cmds:
                _wait([subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)])
        return time.perf_counter() - start

    run("warm", 1, False)  # caches (bytecode, ONNX exports) warm before anything is timed
    return run("alone", 1, False), run("row", 3, False), run("once", 3, True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,auto", help="comma list of --threads values to compare")
    parser.add_argument("--args", default=DEFAULT_ARGS, help="the harness command line (without --threads/--out)")
    opts = parser.parse_args(argv)
    print(f"harness {opts.args}")
    print(f"{'threads':>8} {'alone':>8} {'3 in a row':>11} {'3 at once':>10} {'at once / in a row':>19}")
    with tempfile.TemporaryDirectory(prefix="harness-sharing-") as tmp:
        for threads in opts.threads.split(","):
            alone, row, together = measure(opts.args, threads, Path(tmp))
            print(f"{threads:>8} {alone:>7.1f}s {row:>10.1f}s {together:>9.1f}s {together / row:>18.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
