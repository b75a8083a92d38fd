"""Judging an msprobe dump: every call of the kernel contract recomputed in float64 from its dumped inputs and
judged with the harness's budgets (dtype- and reduction-aware), alone or against a source dump of the same model.

Calls the recomputation table does not know, backward calls and calls it cannot model are kept as "not judged"
with their reason: nothing in a dump is dropped without a word.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.dump_ops import Context, NotJudgedError, Recomputed, find, recomputations
from harness.dump_read import Dump, DumpCall, DumpError
from harness.parity import (
    BASE_BUDGETS,
    DEFAULT_RATIO,
    Budget,
    Metrics,
    Verdict,
    budget_for,
    compare,
    judge,
    judge_against,
    merge,
)
from harness.results import Baseline, CaseRef, ParityRecord, Record, VerdictRecord, utc_now


@dataclass(frozen=True)
class OpJudgement:
    """One dumped call's outcome: judged (verdict and metrics) or not (the reason)."""

    dump: str  # the step/rank folder label
    call: DumpCall
    status: str  # passed / failed / not judged / error
    reason: str = ""
    op: str = ""
    dtype: str = ""
    shape: tuple[int, ...] = ()
    metrics: Metrics | None = None
    budget: Budget | None = None
    reduction_length: int | None = None
    verdict: Verdict | None = None
    baseline: Metrics | None = None  # --against: the source dump's error on its own inputs
    source_call: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.status in ("passed", "failed")


@dataclass(frozen=True)
class Judgement:
    """A dump's outcome: every call in execution order."""

    directory: Path
    ops: tuple[OpJudgement, ...]
    against: Path | None = None

    @property
    def judged(self) -> list[OpJudgement]:
        return [o for o in self.ops if o.judged]

    @property
    def failed(self) -> list[OpJudgement]:
        return [o for o in self.ops if o.status == "failed"]

    @property
    def errors(self) -> list[OpJudgement]:
        return [o for o in self.ops if o.status == "error"]

    def not_judged(self) -> Counter[str]:
        """API name -> how many of its calls were not judged."""
        return Counter(o.call.api for o in self.ops if o.status == "not judged")

    @property
    def exit_code(self) -> int:
        """1 a judged op failed; 3 an op errored or nothing was judgeable; 0 every judged op passed."""
        if self.failed:
            return 1
        if self.errors or not self.judged:
            return 3
        return 0


def _recompute(dump: Dump, table: dict[str, Any]) -> list[tuple[DumpCall, Recomputed | None, str, str]]:
    """(call, recomputation or None, status when None, reason when None) for every call of a dump."""
    ctx = Context(dump.calls)
    rows: list[tuple[DumpCall, Recomputed | None, str, str]] = []
    for call in dump.calls:
        fn = find(call.api, table)
        if call.direction != "forward":
            rows.append((call, None, "not judged", f"{call.direction} call"))
        elif fn is None:
            rows.append((call, None, "not judged", "no recomputation for this API"))
        else:
            try:
                rec = fn(call, ctx)
            except NotJudgedError as exc:
                rows.append((call, None, "not judged", str(exc)))
                continue
            except DumpError:  # a tensor file that cannot be read: the dump is bad input, not the op
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
                rows.append((call, None, "error", f"could not recompute: {type(exc).__name__}: {exc}"))
                continue
            if rec is None:
                rows.append((call, None, "not judged", "not a contract pattern (e.g. a multiply after no silu)"))
            elif rec.dtype not in BASE_BUDGETS:
                rows.append((call, None, "not judged", f"output dtype {rec.dtype} has no parity budget"))
            else:
                rows.append((call, rec, "", ""))
    return rows


def _metrics(rec: Recomputed) -> tuple[Budget, Metrics]:
    budget = budget_for(rec.dtype, rec.reduction_length)
    return budget, compare(rec.out, rec.ref, budget)


def _counterpart(rec: Recomputed, call: DumpCall, source: list[tuple[DumpCall, Recomputed]], seen: Counter[str]):
    """The source's call of the same name, else the source's n-th call judged as the same op (a port changes
    the API: SDPA on the source, npu_fused_infer_attention_score on the target)."""
    by_name = {c.name: (c, r) for c, r in source}
    if call.name in by_name:
        return by_name[call.name]
    same_op = [(c, r) for c, r in source if r.op == rec.op]
    n = seen[rec.op]
    return same_op[n] if n < len(same_op) else None


def judge_dump(
    dumps: list[Dump],
    directory: Path,
    *,
    sources: list[Dump] | None = None,
    against: Path | None = None,
    ratio: float = DEFAULT_RATIO,
) -> Judgement:
    """Every call of every folder judged; with `sources` (folder by folder), against the source dump."""
    table = recomputations()
    ops: list[OpJudgement] = []
    for i, dump in enumerate(dumps):
        src_rows = None
        if sources is not None:
            src_rows = [(c, r) for c, r, _, _ in _recompute(sources[i], table) if r is not None]
        seen: Counter[str] = Counter()
        for call, rec, status, reason in _recompute(dump, table):
            if rec is None:
                ops.append(OpJudgement(dump.label, call, status, reason))
                continue
            budget, m = _metrics(rec)
            verdict = judge(m, budget)
            baseline, source_call, details = None, "", dict(rec.details)
            if src_rows is not None:
                match = _counterpart(rec, call, src_rows, seen)
                if match is None:
                    details["against"] = "no counterpart in the source dump: judged against the oracle alone"
                else:
                    src_call, src_rec = match
                    baseline, source_call = _metrics(src_rec)[1], src_call.name
                    verdict = judge_against(m, baseline, budget, f"dump:{against.name if against else 'source'}", ratio)
                    if tuple(src_rec.out.shape) == tuple(rec.out.shape):
                        details["drift_from_source_rel_l2"] = compare(rec.out, src_rec.out, budget).rel_l2
            seen[rec.op] += 1
            verdict = merge(verdict.mode, verdict, extra=rec.extra) if rec.extra else verdict
            ops.append(
                OpJudgement(
                    dump.label,
                    call,
                    "passed" if verdict.passed else "failed",
                    verdict.reason,
                    rec.op,
                    rec.dtype,
                    tuple(rec.out.shape),
                    m,
                    budget,
                    rec.reduction_length,
                    verdict,
                    baseline,
                    source_call,
                    details,
                )
            )
    return Judgement(directory, tuple(ops), against)


def records(judgement: Judgement, run_id: str) -> list[Record]:
    """One results record per call, as `harness run` writes them (not-judged calls as `skipped` with the reason)."""
    backend = f"dump:{judgement.directory.name}"
    out = []
    for o in judgement.ops:
        shape = "x".join(str(d) for d in o.shape) or "-"
        key = f"dump/{o.dump}/{o.call.name}@{backend}"
        case = CaseRef(key, "dump", o.op or o.call.api, "dump", shape, o.dtype, "dump", 0, backend)
        parity = None
        if o.verdict is not None:
            base = None
            if o.baseline is not None and judgement.against is not None:
                base = Baseline(f"dump:{judgement.against.name}", str(judgement.against), o.baseline)
            details = {
                "dump": {
                    "call": o.call.name,
                    "api": o.call.api,
                    "folder": o.dump,
                    "call_site": o.call.call_site,
                    "source_call": o.source_call,
                    **o.details,
                }
            }
            parity = ParityRecord(
                VerdictRecord.from_dict(o.verdict.to_record()),
                o.metrics,
                o.budget,
                o.reduction_length,
                baseline=base,
                details=details,
            )
        status = {"not judged": "skipped"}.get(o.status, o.status)
        out.append(Record(run_id, utc_now(), case, status, o.reason, shape_info=shape, parity=parity))
    return out
