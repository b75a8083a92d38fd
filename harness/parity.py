"""Parity: metrics of an output against the float64 reference, per-dtype budgets, verdicts.

Several metrics are recorded because each catches a different mistake: rel_l2 the global error, the worst row a
single bad token hidden in a global norm, the fraction outside atol + rtol*|ref| a scattered minority, the
non-finite counts an overflow, and the non-triviality guard an all-zero or constant output that could otherwise
slip under a loose budget. Budgets scale with the dtype's unit roundoff and the op's reduction length.
Routing decisions are judged in harness.parity_routing, whole models in harness.parity_llm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from harness.lazy import torch
from harness.names import DEFAULT_AGAINST_RATIO
from harness.op_types import TensorGroup

# Unit roundoff of each dtype: the relative error of one rounding.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}
UNIT_ROUNDOFF.update(dict.fromkeys(("w8a8", "fp8", "fp8-block"), 2.0**-8))  # quantized formats: bfloat16 carrier
ROW_GUARD = 1e-2  # a row's norm is floored at this fraction of the mean row norm (fully masked rows are zero)
REL_GUARD = 1e-2  # max_rel divides by max(|ref|, this fraction of ref's RMS)


@dataclass(frozen=True)
class Budget:
    """What a correct implementation stays within; atol is relative to the reference's RMS (scale-free)."""

    rel_l2: float
    worst_row_rel_l2: float
    atol: float
    rtol: float
    max_outside: float  # allowed fraction of elements outside atol*rms(ref) + rtol*|ref|

    def scaled(self, factor: float) -> Budget:
        return Budget(
            self.rel_l2 * factor,
            self.worst_row_rel_l2 * factor,
            self.atol * factor,
            self.rtol * factor,
            self.max_outside,
        )


# Budgets at a reduction length of up to 64. A correct kernel that accumulates in at least float32 and rounds
# once to the case dtype lands near 0.5 u in rel_l2; the budgets leave ~4-8x headroom for different summation
# orders, exp implementations and intermediate roundings (P in the case dtype before P V, as flash kernels do).
BASE_BUDGETS: dict[str, Budget] = {
    "float64": Budget(rel_l2=1e-12, worst_row_rel_l2=1e-11, atol=1e-12, rtol=1e-11, max_outside=0.0),
    "float32": Budget(rel_l2=1e-5, worst_row_rel_l2=4e-5, atol=2e-5, rtol=1e-4, max_outside=1e-3),
    "bfloat16": Budget(rel_l2=1.6e-2, worst_row_rel_l2=4e-2, atol=2e-2, rtol=3e-2, max_outside=1e-2),
    "float16": Budget(rel_l2=2e-3, worst_row_rel_l2=5e-3, atol=2.5e-3, rtol=4e-3, max_outside=1e-2),
}
# Quantized formats (harness/quant.py), judged against the float64 emulation of the quantized computation: the
# kernel's own error is its bfloat16 output rounding plus rare one-quantum flips where it computes a scale or
# x/scale in another order (float32 vs the emulation's), so each row is the bfloat16 one. The format's own
# error (against the unquantized function) is recorded beside it, never judged by these rows.
BASE_BUDGETS.update(dict.fromkeys(("w8a8", "fp8", "fp8-block"), BASE_BUDGETS["bfloat16"]))


def reduction_factor(reduction_length: int) -> float:
    """Budgets grow with log2 of the reduction length (a blocked / pairwise sum's error bound): 1 up to 64."""
    return max(1.0, math.log2(max(reduction_length, 1)) / 6.0)


def budget_for(dtype: str, reduction_length: int, overrides: dict[str, float] | None = None) -> Budget:
    """The default budget of a dtype at a reduction length, with optional per-field overrides."""
    try:
        base = BASE_BUDGETS[dtype]
    except KeyError:
        raise ValueError(f"no parity budget for dtype {dtype!r}; known: {', '.join(BASE_BUDGETS)}") from None
    budget = base.scaled(reduction_factor(reduction_length))
    if overrides:
        unknown = set(overrides) - set(asdict(budget))
        if unknown:
            raise ValueError(f"unknown budget fields {sorted(unknown)}; known: {', '.join(asdict(budget))}")
        budget = replace(budget, **overrides)
    return budget


@dataclass(frozen=True)
class Metrics:
    """Error of `out` against `ref`, computed in float64 over the elements finite in both."""

    numel: int
    max_abs: float
    max_rel: float
    rel_l2: float
    cosine: float
    worst_row_rel_l2: float
    worst_row: int
    worst_index: list[int]
    frac_outside: float
    nan_out: int
    inf_out: int
    nonfinite_ref: int
    nonfinite_mismatch: int  # elements non-finite in out where ref is finite
    out_constant: bool
    ref_constant: bool

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def _nan_safe(x: float) -> float:
    return x if math.isfinite(x) else float("nan")


def compare(out: torch.Tensor, ref: torch.Tensor, budget: Budget) -> Metrics:
    """All metrics of out against ref; shapes must match (a mismatch is a contract failure, raised)."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"output shape {list(out.shape)} does not match the reference's {list(ref.shape)}")
    o = out.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    o_fin, r_fin = torch.isfinite(o), torch.isfinite(r)
    both = o_fin & r_fin
    o0 = torch.where(both, o, torch.zeros_like(o))
    r0 = torch.where(both, r, torch.zeros_like(r))
    diff = (o0 - r0).abs()
    numel = o.numel()
    ref_rms = float(r0.pow(2).mean().sqrt()) if numel else 0.0
    ref_norm = float(r0.norm())
    diff_norm = float(diff.norm())
    rel_l2 = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else math.inf)
    out_norm = float(o0.norm())
    cosine = float((o0 * r0).sum()) / (out_norm * ref_norm) if out_norm > 0 and ref_norm > 0 else 0.0
    rel = diff / torch.clamp(r0.abs(), min=REL_GUARD * ref_rms if ref_rms > 0 else 1e-300)
    outside = diff > budget.atol * ref_rms + budget.rtol * r0.abs()

    last = o.shape[-1] if o.dim() else 1
    rows_d = diff.reshape(-1, last).norm(dim=-1)  # [rows]
    rows_r = r0.reshape(-1, last).norm(dim=-1)  # [rows]
    row_floor = ROW_GUARD * float(rows_r.mean()) if rows_r.numel() else 0.0
    row_rel = rows_d / torch.clamp(rows_r, min=max(row_floor, 1e-300))
    worst_row = int(row_rel.argmax()) if row_rel.numel() else 0
    flat_worst = int(diff.argmax()) if numel else 0
    worst_index = list(torch.unravel_index(torch.tensor(flat_worst), o.shape)) if o.dim() else []

    def constant(t: torch.Tensor, finite: torch.Tensor) -> bool:
        vals = t[finite]
        return bool(vals.numel() == 0 or (vals.max() - vals.min()) == 0)

    mismatch = int((~o_fin & r_fin).sum())
    return Metrics(
        numel=numel,
        max_abs=_nan_safe(float(diff.max())) if numel else 0.0,
        max_rel=_nan_safe(float(rel.max())) if numel else 0.0,
        rel_l2=rel_l2,
        cosine=cosine,
        worst_row_rel_l2=float(row_rel.max()) if row_rel.numel() else 0.0,
        worst_row=worst_row,
        worst_index=[int(i) for i in worst_index],
        frac_outside=float(outside.sum()) / numel if numel else 0.0,
        nan_out=int(torch.isnan(o).sum()),
        inf_out=int(torch.isinf(o).sum()),
        nonfinite_ref=int((~r_fin).sum()),
        nonfinite_mismatch=mismatch,
        out_constant=constant(o, o_fin),
        ref_constant=constant(r, r_fin),
    )


@dataclass(frozen=True)
class Failure:
    metric: str
    value: float
    budget: float
    detail: str = ""  # a message for failures that are not a number over a budget (wrong output shape)

    def describe(self) -> str:
        if self.detail:
            return f"{self.metric}: {self.detail}"
        return f"{self.metric} = {self.value:.3g} > budget {self.budget:.3g}"

    @property
    def ratio(self) -> float:
        """How much of its budget the metric uses (> 1 is over); a failure without a number counts as infinite."""
        if self.detail or not math.isfinite(self.value):
            return math.inf
        return self.value / self.budget if self.budget > 0 else (0.0 if self.value == 0 else math.inf)


Check = Failure  # a budgeted comparison, passed or not: (metric, value, budget)


def over(checks: tuple[Check, ...]) -> tuple[Failure, ...]:
    """The checks whose value is not within budget (NaN is not)."""
    return tuple(c for c in checks if not c.value <= c.budget)


def closest(checks: tuple[Check, ...]) -> Check | None:
    """The check that used the largest share of its budget: a passing case's closest call, a failing one's worst."""
    return max(checks, key=lambda c: c.ratio, default=None)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failures: tuple[Failure, ...] = field(default_factory=tuple)
    mode: str = "reference"  # or "against <backend>"
    worst: Check | None = None  # the check closest to (or furthest over) its budget

    @property
    def reason(self) -> str:
        if self.passed:
            return ""
        return "; ".join(f.describe() for f in self.failures)

    def to_record(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "mode": self.mode,
            "reason": self.reason,
            "failures": [asdict(f) for f in self.failures],
            "worst": None if self.worst is None else {**asdict(self.worst), "ratio": self.worst.ratio},
        }


def _guards(m: Metrics, prefix: str) -> list[Failure]:
    """Failures no budget can excuse: non-finite values where the reference is finite, a trivial output."""
    failures = []
    if m.nonfinite_mismatch:
        failures.append(Failure(f"{prefix}nonfinite", float(m.nonfinite_mismatch), 0.0))
    if m.out_constant and not m.ref_constant:
        failures.append(Failure(f"{prefix}constant_output", 1.0, 0.0))
    return failures


def tensor_checks(m: Metrics, budget: Budget, prefix: str = "") -> tuple[Check, ...]:
    """Every budgeted metric of an output tensor against its budget."""
    return (
        Check(f"{prefix}rel_l2", m.rel_l2, budget.rel_l2),
        Check(f"{prefix}worst_row_rel_l2", m.worst_row_rel_l2, budget.worst_row_rel_l2),
        Check(f"{prefix}frac_outside", m.frac_outside, budget.max_outside),
    )


def judge(m: Metrics, budget: Budget, prefix: str = "") -> Verdict:
    """Pass iff no guard trips and every budgeted metric is within its budget; `prefix` names the output."""
    checks = tensor_checks(m, budget, prefix)
    failures = (*_guards(m, prefix), *over(checks))
    return Verdict(not failures, failures, worst=closest((*failures, *checks)))


DEFAULT_RATIO = DEFAULT_AGAINST_RATIO  # --against: the candidate may have at most this multiple of its error
# ... where the baseline's error is floored at this fraction of the absolute budget: below it, correct
# implementations of one function in one dtype differ by their rounding alone. Measured (--suite ci, attention
# and MoE, three dtypes, torch-cpu against ort-cpu and ascend-sim): up to 2.3x at 23% of the budget (float32 MLA
# decode on stress inputs: ORT's textbook scores -> softmax -> PV against torch's fused SDPA, both correct); a
# tenth failed that one, a fifth keeps it at 1.2x.
RATIO_FLOOR = 0.2


def judge_against(
    m: Metrics, baseline: Metrics, budget: Budget, baseline_name: str, ratio: float = DEFAULT_RATIO, prefix: str = ""
) -> Verdict:
    """Port validation: judge by err(candidate, ref) / err(baseline, ref), each floored near the dtype's noise."""
    checks = tuple(
        Check(
            f"{prefix}{metric}_vs_{baseline_name}",
            getattr(m, metric),
            ratio * max(getattr(baseline, metric), RATIO_FLOOR * limit),
        )
        for metric, limit in (("rel_l2", budget.rel_l2), ("worst_row_rel_l2", budget.worst_row_rel_l2))
    )
    failures = (*_guards(m, prefix), *over(checks))
    return Verdict(not failures, failures, mode=f"against {baseline_name}", worst=closest((*failures, *checks)))


def checks_against(
    failures: tuple[Failure, ...],
    checks: tuple[Check, ...],
    baseline: tuple[Check, ...],
    baseline_name: str,
    ratio: float = DEFAULT_RATIO,
) -> tuple[tuple[Failure, ...], tuple[Check, ...]]:
    """A workload's own checks (LLM logits and decode statistics, MoE routing weights and agreeing tokens)
    re-judged against the baseline's same checks, like judge_against: each may reach `ratio` times the
    baseline's value, floored at RATIO_FLOOR of its absolute budget. A check the baseline lacks keeps its
    absolute budget; failures that are no check (an unexplained routing decision, a malformed output, a
    guard) stay as they are. Returns (failures, checks)."""
    base = {c.metric: c.value for c in baseline}
    judged = tuple(
        Check(f"{c.metric}_vs_{baseline_name}", c.value, ratio * max(base[c.metric], RATIO_FLOOR * c.budget))
        if c.metric in base
        else c
        for c in checks
    )
    named = {c.metric for c in checks}
    return (*(f for f in failures if f.metric not in named), *over(judged)), judged


def merge(mode: str, *verdicts: Verdict, extra: tuple[Failure, ...] = (), checks: tuple[Check, ...] = ()) -> Verdict:
    """One verdict from several checks of a case: it passes only if all of them do. `extra`: failures found
    beside the primary verdicts; `checks`: every budgeted comparison they came from, passed or not."""
    failures = tuple(extra) + tuple(f for v in verdicts for f in v.failures)
    worsts = tuple(v.worst for v in verdicts if v.worst is not None)
    return Verdict(not failures, failures, mode, worst=closest((*failures, *worsts, *checks)))


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Determinism check: the same bits, NaNs included."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int)))


def all_bitwise_equal(a: Any, b: Any) -> bool:
    """bitwise_equal over (nested) outputs: every tensor the same bits, everything else equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and bitwise_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(all_bitwise_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, TensorGroup):  # a Routing
        return type(a) is type(b) and all_bitwise_equal(a.tensors(), b.tensors())
    return a == b
