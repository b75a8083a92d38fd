"""Where a timed run's wall time goes: the op under test against the harness around it.

Two figures, each measured side by side in one process:
1. The smoke suite on torch-cpu, timed: the share of the sweep's wall time spent inside the backend's ops
   (parity calls, warm-up, timed samples, decode steps), against input generation, references, metrics and
   records. Start-up (importing torch, the harness, and transformers' model code, which the first LLM case
   would otherwise import) is timed apart, and the share over the whole process is printed too.
2. ort-cpu's timed call against a bare `session.run` on the same session and feeds (attention.decode, tiny):
   what the harness adds per call once `bind` has resolved the session and the feeds.

    python benchmarks/overhead.py [--suite smoke] [-w GLOB] [--threads 1] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()

import torch  # noqa: E402

from harness.backend import default_registry  # noqa: E402
from harness.backends.torch_cpu import TorchCpu  # noqa: E402
from harness.names import OPS  # noqa: E402
from harness.results import ResultWriter, new_run_id  # noqa: E402
from harness.runner import Runner, RunOptions  # noqa: E402
from harness.suites import resolve_suite  # noqa: E402
from harness.workload import WorkloadRegistry  # noqa: E402

IMPORTED = time.perf_counter()


class OpClock:
    """Time spent inside a backend class's contract ops (outermost calls only: moe calls route inside), while
    the clock is installed (a context manager: the class is restored on exit)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.ns = 0
        self.calls = 0
        self._depth = 0
        self._originals: dict[str, Any] = {}

    def __enter__(self) -> OpClock:
        for name in OPS:
            self._originals[name] = self.cls.__dict__.get(name)
            setattr(self.cls, name, self._wrap(getattr(self.cls, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._originals.items():
            if original is None:
                delattr(self.cls, name)  # the method was inherited
            else:
                setattr(self.cls, name, original)

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.ns += time.perf_counter_ns() - start
                    self.calls += 1

        return timed


def _import_model_code() -> float:
    """Import transformers' code for every LLM architecture (a one-time cost, like torch's import); seconds."""
    start = time.perf_counter()
    try:
        from harness.models.llm_config import ARCHS, build_config, causal_lm_class
    except ImportError:
        return 0.0
    for arch in ARCHS:
        causal_lm_class(build_config(arch, "tiny"))
    return time.perf_counter() - start


def sweep_share(suite_name: str, workloads: tuple[str, ...], threads: int, out: Path) -> None:
    model_code = _import_model_code()
    suite = dataclasses.replace(resolve_suite(suite_name), backends=("torch-cpu",))
    if workloads:
        suite = dataclasses.replace(suite, workloads=workloads)
    options = RunOptions(timing=suite.timing, determinism=True, threads=threads)
    runner = Runner(default_registry(), WorkloadRegistry.discover(), options, new_run_id())
    cases = runner.plan(suite)
    with OpClock(TorchCpu) as clock, ResultWriter(out) as writer:
        start = time.perf_counter()
        runner.run(cases, writer)
        wall = time.perf_counter() - start
    op = clock.ns * 1e-9
    process = time.perf_counter() - STARTED
    print(f"1. {suite_name} suite on torch-cpu, timed, {threads} thread(s): {len(cases)} cases")
    print(f"   start-up: imports {IMPORTED - STARTED:.2f} s, transformers' model code {model_code:.2f} s")
    print(f"   sweep wall time {wall:.2f} s; whole process so far {process:.2f} s")
    print(f"   inside the ops: {op:.2f} s in {clock.calls} calls = {op / wall:.0%} of the sweep's wall time")
    print(
        f"   the harness around them: {wall - op:.2f} s ({(wall - op) / wall:.0%}); ops over the whole process: ",
        end="",
    )
    print(f"{op / process:.0%}")


def ort_per_call(rounds: int) -> None:
    from harness.backends.onnxruntime import OrtCpu
    from harness.models.attention import workloads as attention_workloads

    workload = next(w for w in attention_workloads() if w.name == "attention.decode")
    shape = workload.shape("tiny", "gqa")
    inputs = workload.make_inputs(shape, torch.float32, 0, "normal")
    backend = OrtCpu()
    backend.set_threads(torch.get_num_threads())
    args, kwargs = workload.split_args(inputs, shape)
    timed = backend.bind("attention", args, kwargs)
    unbound = lambda: backend.attention(*args, **kwargs)  # noqa: E731 - the op called as the runner once did
    session = next(iter(backend._sessions.values()))
    names = [i.name for i in session.get_inputs()]
    arrays = [t.contiguous().numpy() for t in (*args, kwargs["kv_lens"])]
    feeds = dict(zip(names, arrays, strict=True))

    def bare() -> Any:
        return session.run(None, feeds)

    samples: dict[str, list[float]] = {"bare session.run": [], "harness (bound)": [], "op call each time": []}
    calls = {"bare session.run": bare, "harness (bound)": timed, "op call each time": unbound}
    for fn in calls.values():
        fn()
    for _ in range(rounds):  # interleaved, so a noisy neighbour hits all three alike
        for name, fn in calls.items():
            start = time.perf_counter_ns()
            fn()
            samples[name].append(time.perf_counter_ns() - start)
    base = statistics.median(samples["bare session.run"])
    print(f"2. ort-cpu, attention.decode tiny/gqa float32, {rounds} interleaved rounds (median per call):")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"   {name:<20} {med / 1e3:8.1f} us  {med / base:5.2f}x bare")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("-w", "--workload", action="append", default=[], help="only these workloads (globs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("results/runs/overhead.jsonl"))
    args = parser.parse_args(argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        _report(args)
    finally:
        torch.set_num_threads(before)
    return 0


def _report(args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, {args.threads} thread(s), python {sys.version.split()[0]}")
    sweep_share(args.suite, tuple(args.workload), args.threads, args.out)
    ort_per_call(args.rounds)


if __name__ == "__main__":
    sys.exit(main())
