"""A backend's outputs judged (`Evaluation`), the standard judgement of one output tensor, and the other values a
workload hands the executor: timing variants (a second timed call) and invariance parts (--invariance).
Re-exported by harness.workload, the import path workloads use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from harness import parity
from harness.dtypes import DTYPES
from harness.lazy import torch

Call = Callable[..., Any]  # call(**extra_op_kwargs) -> the backend's output(s), on the host
# A backend's outputs by name, as a workload's judgement needs them ("out" the primary output; tensors, or
# whatever a malformed backend returned): what --save-outputs writes and --against DIR judges again.
Outputs = dict[str, Any]


@dataclass
class Evaluation:
    """A backend's output judged: the primary output and its metrics (None when it is malformed), failures
    beyond the primary metrics (routing, say), and extra record sections."""

    output: torch.Tensor | None
    metrics: parity.Metrics | None
    prefix: str = ""  # the name of the primary output in failure messages ("forced." for moe.layer)
    failures: tuple[parity.Failure, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    judge_primary: bool = True  # False: the workload judged its output itself (LLM logits), --against too
    checks: tuple[parity.Check, ...] = ()  # the workload's own budgeted comparisons, passed or not (the closest call)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # the named output tensors (--save-outputs)


def structural_failures(out: Any, ref: torch.Tensor, dtype: str, prefix: str = "") -> tuple[parity.Failure, ...]:
    """An output that is not a tensor of the contract's shape and the case dtype fails before any metric."""
    if not isinstance(out, torch.Tensor):
        return (parity.Failure(f"{prefix}output", 0.0, 0.0, detail=f"expected a tensor, got {type(out).__name__}"),)
    problems = []
    if tuple(out.shape) != tuple(ref.shape):
        problems.append(f"output shape {list(out.shape)} != contract shape {list(ref.shape)}")
    if out.dtype != DTYPES[dtype]:
        problems.append(f"output dtype {out.dtype} != case dtype {dtype}")
    return tuple(parity.Failure(f"{prefix}output", 0.0, 0.0, detail=p) for p in problems)


def evaluate_tensor(out: Any, ref: torch.Tensor, dtype: str, budget: parity.Budget, prefix: str = "") -> Evaluation:
    """The standard judgement of one output tensor against its reference."""
    failures = structural_failures(out, ref, dtype, prefix)
    if failures:
        return Evaluation(out if isinstance(out, torch.Tensor) else None, None, prefix, failures)
    return Evaluation(out, parity.compare(out, ref, budget), prefix)


def with_outputs(evaluation: Evaluation, outputs: Mapping[str, Any]) -> Evaluation:
    """The evaluation keeping the tensors among `outputs`, and its primary output as "out" (--save-outputs)."""
    tensors = {n: t for n, t in outputs.items() if isinstance(t, torch.Tensor)}
    if isinstance(evaluation.output, torch.Tensor):
        tensors.setdefault("out", evaluation.output)
    return replace(evaluation, outputs=tensors)


@dataclass(frozen=True)
class VariantInputs:
    """One input set of a timing variant, held on the device: what its timed call reads can change from call to
    call (an LLM's KV cache grows and is cropped back), so `tensors()` says what it reads now, and `load(host)`
    refills the same storage (the same objects) with other host data: timing checks rotate over such sets
    (harness/timing_checks.py), as they do over the main op's inputs."""

    call: Callable[[], Any]
    tensors: Callable[[], Mapping[str, Any]]  # name -> device tensor the call reads (checksummed across timing)
    load: Callable[[Mapping[str, Any]], None]  # the group's host tensors (or their perturbed copies) -> same storage


@dataclass(frozen=True)
class TimingVariant:
    """A second timed call of a workload (LLM decode beside prefill), with its own work counts. With `inputs`
    (the set `fn` runs on) and `make_inputs` (a fresh set from host tensors like the group's), its timing is
    checked as the main op's is; without them, only against the device's physical limits."""

    fn: Callable[[], Any]
    flops: float
    bytes_moved: float
    tokens: int | None = None
    inputs: VariantInputs | None = None
    make_inputs: Callable[[Mapping[str, Any]], VariantInputs] | None = None


@dataclass(frozen=True)
class InvariancePart:
    """A part of a case that also runs alone (--invariance): a batch row, the first tokens, a shorter prefill
    chunk. `index` picks the part's rows out of the whole call's primary output (tensor[index])."""

    name: str
    shape: Any
    tensors: Mapping[str, torch.Tensor]
    index: tuple[slice, ...]
