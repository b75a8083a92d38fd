"""Batch invariance (`harness run --invariance`): each part of a case (a batch row, the first half of the tokens,
a shorter prefill chunk: Workload.invariance_parts) runs alone on the same backend, and its output is compared
with the same rows of the whole call's output. A request must give the same answer whatever batch it is served
in; most kernels do not (their reduction order depends on the batch), so a difference is reported, and fails
the case only with --require-invariance.

The record's `parity.invariance` section: `invariant` (every part bitwise equal; None when not applicable),
`max_abs_diff` between the forms, and each form's rel_l2 against the float64 reference, per part and worst.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from harness.lazy import torch
from harness.results import Record
from harness.workload import Call, CaseInputs, InvariancePart

CallFor = Callable[[CaseInputs], Call]  # the case's backend op on a part's inputs


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 for an all-zero reference matched exactly)."""
    diff = float(torch.linalg.vector_norm(out.double() - ref.double()))
    norm = float(torch.linalg.vector_norm(ref.double()))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def _part(part: InvariancePart, group: CaseInputs, whole: torch.Tensor, call_for: CallFor) -> dict[str, Any]:
    sub = CaseInputs(group.workload, part.shape, group.dtype, dict(part.tensors), context=group.context)
    alone = group.workload.invariance_output(call_for(sub), sub)
    rows, ref = whole[part.index], group.reference()[part.index]
    if not isinstance(alone, torch.Tensor) or tuple(alone.shape) != tuple(rows.shape) or alone.dtype != rows.dtype:
        got = f"{type(alone).__name__} {list(alone.shape) if isinstance(alone, torch.Tensor) else ''}".strip()
        return {"part": part.name, "bitwise_equal": False, "problem": f"alone gave {got}, expected {list(rows.shape)}"}
    equal = bool(torch.equal(alone, rows))  # NaN never equals itself: a NaN output is never called invariant
    diff = float((alone.double() - rows.double()).abs().max()) if rows.numel() else 0.0
    return {
        "part": part.name,
        "bitwise_equal": equal,
        "max_abs_diff": diff,
        "rel_l2_whole": _rel_l2(rows, ref),
        "rel_l2_alone": _rel_l2(alone, ref),
    }


def check(group: CaseInputs, whole: Any, call_for: CallFor) -> dict[str, Any]:
    """The invariance section of one case: its parts run alone through `call_for`, compared with `whole`
    (the primary output of the case's own call)."""
    parts = group.workload.invariance_parts(group)
    if not parts:
        return {"invariant": None, "reason": f"{group.workload.name} declares no parts to run alone"}
    if not isinstance(whole, torch.Tensor):
        return {"invariant": None, "reason": "the whole call gave no primary output tensor"}
    found = [_part(p, group, whole, call_for) for p in parts]
    diffs = [f["max_abs_diff"] for f in found if "max_abs_diff" in f]
    return {
        "invariant": all(f["bitwise_equal"] for f in found),
        "max_abs_diff": max(diffs, default=None),
        "rel_l2_whole": max((f["rel_l2_whole"] for f in found if "rel_l2_whole" in f), default=None),
        "rel_l2_alone": max((f["rel_l2_alone"] for f in found if "rel_l2_alone" in f), default=None),
        "parts": found,
    }


def failure_reason(section: dict[str, Any]) -> str:
    """The --require-invariance reason of a non-invariant case, naming the first differing part."""
    first = next(f for f in section["parts"] if not f["bitwise_equal"])
    what = first.get("problem") or f"max abs difference {first['max_abs_diff']:.3g}"
    return f"not batch invariant: part {first['part']} run alone differs from the whole call ({what})"


def tally(records: Iterable[Record]) -> tuple[int, int, float | None]:
    """(cases not invariant, cases checked, the largest difference) over records with an invariance section."""
    found = [s for r in records if r.parity is not None and (s := r.parity.section("invariance"))]
    checked = [s for s in found if s.get("invariant") is not None]
    diffs = [s["max_abs_diff"] for s in checked if s.get("max_abs_diff") is not None]
    return sum(s["invariant"] is False for s in checked), len(checked), max(diffs, default=None)
