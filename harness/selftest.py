"""`harness selftest`: proof that the parity checks catch real mistakes and do not fail correct code.

Every planted fault of backends/faults.py runs through the ordinary runner on the cases where it must show,
and every correct-but-different implementation on the cases it must pass. A fault is caught only if EVERY one
of its cases fails (and, for LLM faults, the layer-wise localization names the planted layer and op).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backend import default_registry
from harness.runner import Runner, RunOptions
from harness.suites import Suite
from harness.workload import WorkloadRegistry

log = logging.getLogger(__name__)

FAULTS_PLUGIN = "harness.backends.faults"
ALL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Check:
    description: str
    backend: str
    expect: str  # "caught" | "passes"
    workloads: tuple[str, ...]
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    shapes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("normal", "stress")
    culprit: tuple[int, str] | None = None  # LLM faults: the (layer, op kind) localization must name

    @property
    def layerwise(self) -> bool:
        return self.workloads[0].startswith("llm.")


CHECKS: tuple[Check, ...] = (
    Check(
        "top-left causal alignment (SDPA is_causal)",
        "bug-top-left-causal",
        "caught",
        ("attention.chunked_prefill", "attention.decode"),
        ALL_DTYPES,
    ),
    Check("GQA head h reads kv head h % Hkv", "bug-wrong-gqa", "caught", ("attention.*",), ALL_DTYPES, ("gqa",)),
    Check(
        "float16 softmax without max-subtraction",
        "bug-naive-softmax",
        "caught",
        ("attention.*",),
        ("float16",),
        inputs=("stress",),
    ),
    Check("attention returns zeros", "bug-zeros", "caught", ("attention.*",), ALL_DTYPES),
    Check("last token dropped", "bug-dropped-token", "caught", ("attention.*",), ALL_DTYPES),
    Check("blockwise online softmax (another order)", "blockwise-online", "passes", ("attention.*",), ALL_DTYPES),
    Check(
        "MoE weights not renormalized",
        "bug-moe-no-renorm",
        "caught",
        ("moe.layer", "moe.route"),
        shapes=("mixtral", "qwen3-moe", "deepseek-v3"),
    ),
    Check(
        "DeepSeek bias in the combine weights",
        "bug-moe-bias-in-weights",
        "caught",
        ("moe.layer", "moe.route"),
        shapes=("deepseek-v3",),
    ),
    Check("expert ids off by one", "bug-moe-ids-off-by-one", "caught", ("moe.layer", "moe.route")),
    Check(
        "DeepSeek groups ranked by max, not top-2 sum",
        "bug-moe-groups-by-max",
        "caught",
        ("moe.layer", "moe.route"),
        shapes=("deepseek-v3",),
    ),
    Check("MoE token output dropped", "bug-moe-dropped-token", "caught", ("moe.layer", "moe.experts")),
    Check("dense MoE: every expert on every token (another order)", "dense-moe", "passes", ("moe.*",)),
    Check(
        "rope in the interleaved style where the model uses half",
        "bug-rope-interleaved",
        "caught",
        ("llm.llama3", "llm.qwen3"),
        inputs=("normal",),
        culprit=(0, "attention"),
    ),
    Check(
        "one corrupted weight in layer 2's MLP",
        "bug-corrupt-layer2-mlp",
        "caught",
        ("llm.llama3",),
        inputs=("normal",),
        culprit=(2, "mlp"),
    ),
    Check(
        "decode steps with rope positions one ahead (prefill right)",
        "bug-decode-rope-shift",
        "caught",
        ("llm.*",),
        inputs=("normal",),
    ),
    Check("torch-cpu on every LLM (no layer may be flagged)", "torch-cpu", "passes", ("llm.*",), inputs=("normal",)),
    Check(
        "Ascend: mask passed in torch's convention (True = visible)",
        "bug-ascend-mask-not-inverted",
        "caught",
        ("attention.*",),
        ("float32",),
    ),
    Check(
        "Ascend: scale left at the op default 1.0",
        "bug-ascend-default-scale",
        "caught",
        ("attention.*",),
        ("float16", "bfloat16"),
    ),
    Check(
        "Ascend: sparse_mode 2 (top-left) where 3 is meant",
        "bug-ascend-sparse-mode-2",
        "caught",
        ("attention.chunked_prefill", "attention.decode"),
        ("float16", "bfloat16"),
        ("gqa",),
    ),
    Check(
        "ascend-sim: the Ascend adapter over the simulator",
        "ascend-sim",
        "passes",
        ("attention.*", "moe.*"),
        ALL_DTYPES,
    ),
)


@dataclass(frozen=True)
class Outcome:
    check: Check
    cases: int
    good: int  # cases that behaved as expected
    metrics: tuple[str, ...]  # failing metrics seen (for faults)
    problem: str  # empty when the check holds

    @property
    def ok(self) -> bool:
        return not self.problem


def _metric_names(record: dict[str, Any]) -> set[str]:
    verdict = (record.get("parity") or {}).get("verdict") or {}
    return {
        f["metric"].split(".")[0] if f["metric"].startswith("layerwise") else f["metric"]
        for f in verdict.get("failures", [])
    }


def judge_check(check: Check, records: list[dict[str, Any]]) -> Outcome:
    if not records:
        return Outcome(check, 0, 0, (), "no cases ran")
    metrics: set[str] = set()
    good = 0
    problems = []
    for r in records:
        status = r["status"]
        if check.expect == "passes":
            culprit = ((r.get("parity") or {}).get("layerwise") or {}).get("culprit")
            if status == "passed" and culprit is None:
                good += 1
            else:
                problems.append(f"{r['case']['key']} {status}: {r['reason'][:120]}")
            continue
        if status != "failed":
            problems.append(f"{r['case']['key']} {status}")
            continue
        metrics |= _metric_names(r)
        if check.culprit is not None:
            c = r["parity"]["layerwise"]["culprit"]
            if c is None or (c["layer"], c["kind"]) != check.culprit:
                problems.append(f"{r['case']['key']}: localized to {c and (c['layer'], c['kind'])}")
                continue
        good += 1
    problem = ""
    if problems:
        label = "falsely failed" if check.expect == "passes" else "slipped through"
        problem = f"{len(problems)} of {len(records)} {label}; first: {problems[0]}"
    return Outcome(check, len(records), good, tuple(sorted(metrics)), problem)


def run_selftest(
    records_out: Any, on_check: Callable[[Outcome], None] | None = None, checks: tuple[Check, ...] = CHECKS
) -> list[Outcome]:
    """Run every check through the ordinary runner, appending its records to `records_out` (a ResultWriter)."""
    from harness.results import new_run_id

    registry = default_registry([FAULTS_PLUGIN])
    workloads = WorkloadRegistry.discover()
    outcomes = []
    for check in checks:
        suite = Suite(
            f"selftest:{check.backend}",
            workloads=check.workloads,
            dtypes=check.dtypes,
            shapes=check.shapes,
            backends=(check.backend,),
            inputs=check.inputs,
        )
        options = RunOptions(parity_only=True, determinism=False, layerwise=check.layerwise)
        runner = Runner(registry, workloads, options, new_run_id())
        records: list[dict[str, Any]] = []
        runner.run(runner.plan(suite), records_out, lambda case, record, _r=records: _r.append(record))
        outcome = judge_check(check, records)
        outcomes.append(outcome)
        if on_check is not None:
            on_check(outcome)
    return outcomes


def default_output(run_dir: Path = Path("results") / "runs") -> Path:
    from harness.results import new_run_id

    return run_dir / f"selftest-{new_run_id()}.jsonl"
