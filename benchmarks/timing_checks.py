"""The timed path's checks (issue 23) leave the timed figure alone: an honest op's median with the checks on and
off, measured side by side in one process (rounds alternate, so a noisy neighbour hits both alike), and the wall
time the checks add around the timed region.

    python benchmarks/timing_checks.py [--rounds 7] [--time-budget 0.2] [--threads 1]

Each line: the case, the median of the per-round medians with checks off and on, their ratio (1.00 = unchanged;
the spread of the off rounds says what "within noise" is here), and the wall time of one timed case either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backend import default_registry
from harness.case_timing import CaseTimer
from harness.executor import DeviceCall
from harness.timing import TimingConfig
from harness.workload import Case, CaseInputs, WorkloadRegistry

CASES = (  # (backend, workload, preset, shape): a short op, a longer one, a layer, another backend's bound call
    ("torch-cpu", "attention.decode", "tiny", "gqa"),
    ("torch-cpu", "attention.prefill", "small", "gqa"),
    ("torch-cpu", "moe.layer", "tiny", "mixtral"),
    ("ort-cpu", "attention.decode", "tiny", "gqa"),
)


def one_case(backend_name: str, workload_name: str, preset: str, shape_name: str, rounds: int, budget: float) -> None:
    registry, workloads = default_registry(), WorkloadRegistry.discover()
    if not registry.probe(backend_name).available:
        print(f"{backend_name:<10} {workload_name}: backend unavailable, skipped")
        return
    workload = workloads.get(workload_name)
    shape = workload.shape(preset, shape_name)
    group = CaseInputs(workload, shape, "float32", workload.make_inputs(shape, torch.float32, 0, "normal"))
    case = Case(workload_name, preset, shape_name, "float32", "normal", 0, backend_name, workload.op)
    backend = registry.create(backend_name)
    on_device = DeviceCall(backend, group)
    budget_ = workload.budget("float32", shape)
    timers = {
        "off": CaseTimer(TimingConfig(budget_s=budget, checks=False)),
        "on": CaseTimer(TimingConfig(budget_s=budget, checks=True)),
    }
    medians: dict[str, list[float]] = {"off": [], "on": []}
    walls: dict[str, list[float]] = {"off": [], "on": []}
    valid = True
    for _ in range(rounds):
        for name, timer in timers.items():
            start = time.perf_counter()
            timing = timer.time(
                case, group, backend, on_device.bound(), on_device.device, "", inputs=on_device.inputs, budget=budget_
            )["timing"]
            walls[name].append(time.perf_counter() - start)
            medians[name].append(timing["median_ns"])
            valid = valid and timing.get("valid", True)
    off, on = statistics.median(medians["off"]), statistics.median(medians["on"])
    spread = (max(medians["off"]) - min(medians["off"])) / off
    print(
        f"{backend_name:<10} {workload_name}/{preset}/{shape_name}: median off {off / 1e3:9.1f} us, "
        f"on {on / 1e3:9.1f} us, on/off {on / off:5.3f} (off rounds spread {spread:.1%}); "
        f"wall per case off {statistics.median(walls['off']):.2f} s, on {statistics.median(walls['on']):.2f} s; "
        f"valid: {valid}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--time-budget", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} alternating rounds per case")
    for spec in CASES:
        one_case(*spec, rounds=args.rounds, budget=args.time_budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
