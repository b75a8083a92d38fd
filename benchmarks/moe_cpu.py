"""tokens/s of the torch-cpu MoE layer beside transformers' own MoE blocks on the same weights, in one run.

    python benchmarks/moe_cpu.py                      # small preset, float32, every scheme
    python benchmarks/moe_cpu.py --dtype float32,bfloat16 --time-budget 2

Implementations are timed in interleaved rounds (A B C, A B C, ...) so a noisy neighbour on a shared machine
hits all of them alike; the ratio column is the figure to quote. Each transformers block is first checked to
compute the same function as torch-cpu on these weights (the rel_l2 column), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from harness.backend import DTYPES, default_registry
from harness.models.hf_moe import build_block, load_contract_inputs
from harness.parity import budget_for, compare
from harness.timing import Measurement, TimingConfig, measure
from harness.workload import WorkloadRegistry

IMPLEMENTATIONS = ("grouped_mm", "eager")  # transformers' fast default, and its per-expert loop


def interleaved(
    fns: dict[str, Callable[[], object]], timer, config: TimingConfig, rounds: int
) -> dict[str, Measurement]:
    """Time each function in turn, `rounds` times, pooling the samples per function."""
    per_round = replace(config, budget_s=config.budget_s / rounds)
    pooled: dict[str, list[float]] = {name: [] for name in fns}
    calls: dict[str, int] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            m = measure(fn, timer, per_round)
            pooled[name] += m.samples_ns
            calls[name] = m.calls_per_sample
    return {name: Measurement(s, calls[name], 0, timer.method) for name, s in pooled.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--dtype", default="float32", help="comma list: float32, bfloat16, float16")
    parser.add_argument("--shapes", default="", help="comma list of shape names (default: all of the preset)")
    parser.add_argument("--time-budget", type=float, default=1.0, help="seconds of timing per implementation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args(argv)

    backend = default_registry().create("torch-cpu")
    workload = WorkloadRegistry.discover().get("moe.layer")
    shapes = workload.shapes(args.preset)
    chosen = [s for s in args.shapes.split(",") if s] or list(shapes)
    config = TimingConfig(budget_s=args.time_budget, warmup_s=0.05, min_samples=3)
    rows = []
    header = (
        f"{'shape':<12} {'dtype':<9} {'tokens':>6} {'torch-cpu tok/s':>16} "
        + " ".join(f"{'hf ' + impl + ' tok/s':>20}" for impl in IMPLEMENTATIONS)
        + f" {'torch-cpu / hf grouped_mm':>26} {'hf rel_l2':>10}"
    )
    print(f"MoE layer, preset {args.preset}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(header)
    with torch.no_grad():
        for name in chosen:
            shape = shapes[name]
            for dtype_name in args.dtype.split(","):
                dtype = DTYPES[dtype_name]
                inputs = workload.make_inputs(shape, dtype, 0, "normal")
                op_args, op_kwargs = workload.split_args(inputs, shape)
                ours, _ = backend.moe(*op_args, **op_kwargs)
                fns: dict[str, Callable[[], object]] = {
                    "torch-cpu": lambda a=op_args, k=op_kwargs: backend.moe(*a, **k)
                }
                agreement = []
                x = inputs["x"][None]  # [1, T, H]
                for impl in IMPLEMENTATIONS:
                    block = load_contract_inputs(build_block(name, shape.dims, implementation=impl).to(dtype), inputs)
                    block.eval()
                    theirs = block(x)[0]
                    agreement.append(compare(theirs, ours.double(), budget_for(dtype_name, 1)).rel_l2)
                    fns[impl] = lambda b=block, x=x: b(x)
                results = interleaved(fns, backend.timer(), config, args.rounds)
                tps = {k: shape.t / (m.stats.median_ns * 1e-9) for k, m in results.items()}
                row = {
                    "shape": name,
                    "dtype": dtype_name,
                    "tokens": shape.t,
                    "tokens_per_s": tps,
                    "ci95_ns": {k: [m.stats.ci95_low_ns, m.stats.ci95_high_ns] for k, m in results.items()},
                    "ratio_vs_grouped_mm": tps["torch-cpu"] / tps["grouped_mm"],
                    "hf_rel_l2_vs_torch_cpu": max(agreement),
                }
                rows.append(row)
                print(
                    f"{name:<12} {dtype_name:<9} {shape.t:>6} {tps['torch-cpu']:>16.0f} "
                    + " ".join(f"{tps[impl]:>20.0f}" for impl in IMPLEMENTATIONS)
                    + f" {row['ratio_vs_grouped_mm']:>26.2f} {row['hf_rel_l2_vs_torch_cpu']:>10.2e}"
                )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as fh:
            for row in rows:
                fh.write(json.dumps({"benchmark": "moe_cpu", "preset": args.preset, **row}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
