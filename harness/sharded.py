"""`harness run` under torchrun: one rank's life in a sharded sweep.

Every rank plans the same cases (the same flags, the run id broadcast from rank 0), takes its share
(harness/shard.py), places its backends on its own device (`Backend.place(LOCAL_RANK)`) and streams its records
into its own part file (harness/parts.py). At the end the ranks exchange their exit codes and record counts over
gloo (harness/ranks.py); rank 0 appends every part to the one JSONL in plan order, deletes the parts, and prints
the summary; the run's exit code, the worst over ranks, is every rank's. Ranks other than 0 print no progress
and no summary; their warnings and errors carry a `[rank K]` prefix.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import supervise
from harness.display import RunProgress
from harness.launch import (
    RunInterruptedError,
    RunOutcome,
    RunRequest,
    RunStoppedError,
    _os_error,
    _Output,
    default_out,
    outcome,
    prepare,
    sweep,
)
from harness.parts import finished_with_parts, merge_parts, part_files, part_path
from harness.ranks import Coordinator, RankInfo, prefix_logs
from harness.results import Record, new_run_id, read_records
from harness.runner import RunSummary, UsageError
from harness.shard import Share, flops_cost, shard

# Exit codes from least to most severe: the run's is the worst any rank had.
SEVERITY = (0, 1, 3, 2, 130)


def worst(codes: list[int]) -> int:
    return max(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else len(SEVERITY))


class _RankOutput:
    """A rank's part-file writer that leaves out the records another rank writes (collective cases)."""

    def __init__(self, output: _Output, unrecorded: frozenset[str]) -> None:
        self.output = output
        self.unrecorded = unrecorded
        self.path = output.path

    @property
    def count(self) -> int:
        return self.output.count

    def write(self, record: Record) -> None:
        if record.case.key not in self.unrecorded:
            self.output.write(record)

    def close(self) -> None:
        self.output.close()

    def abandon(self) -> None:
        self.output.abandon()


def launch_rank(request: RunRequest, err: Console, info: RankInfo) -> RunOutcome:
    """This rank's share of the run; on rank 0 the merged run's summary (an empty one elsewhere)."""
    if request.ray is not None:
        raise UsageError(
            "--executor ray runs a sweep from one driver, and torchrun already gives each rank its share: "
            "launch one of them (harness run --executor ray, or torchrun ... -m harness run)"
        )
    if not info.leader:
        prefix_logs(info)
        err = Console(stderr=True, quiet=True)  # progress and notes: rank 0's alone
    coordinator = Coordinator(info)
    try:
        return _run_rank(request, err, info, coordinator)
    finally:
        coordinator.close()


def _run_rank(request: RunRequest, err: Console, info: RankInfo, coordinator: Coordinator) -> RunOutcome:
    run_id = coordinator.broadcast(new_run_id() if info.leader else None)
    options = dataclasses.replace(request.options, local_rank=info.local_rank)
    runner, cases = prepare(dataclasses.replace(request, options=options), run_id=run_id)
    resumed = request.resume is not None
    out_path = request.resume or request.out or default_out(run_id)
    done = finished_with_parts(out_path, rerun_errors=request.rerun_errors) if resumed else {}
    workloads = runner.planner.workloads
    share: Share = shard(
        cases,
        info.world_size,
        flops_cost(runner.planner),
        collective=lambda case: workloads.get(case.workload).collective,
    )[info.rank]
    previous = [done[c.key] for c in cases if c.key in done]
    mine = [c for c in share.cases if c.key not in done]
    if resumed:
        err.print(f"resuming {out_path}: {len(previous)} cases already recorded, {len(cases) - len(previous)} to run")
    together = sum(1 for c in mine if workloads.get(c.workload).collective)
    shared = f" ({together} of them collective: every rank runs them, rank 0 records them)" if together else ""
    err.print(
        f"{info.world_size} ranks: rank 0 runs {len(mine)} cases{shared}; the others record theirs in "
        f"{out_path}.rank-K.part"
    )
    coordinator.barrier()  # every rank has read OUT and the leftover parts before any rank appends to its own
    started = time.perf_counter()
    code, message, count = 0, "", 0
    try:
        output = _RankOutput(_Output(part_path(out_path, info.rank), "--out"), share.unrecorded)
        supervise.note_output(out_path)
        result, _ = sweep(runner, mine, output, RunProgress(err, len(mine)), previous=len(previous))
        count = output.count
        code = result.exit_code
    except RunInterruptedError as exc:
        code, message = 130, str(exc)
    except RunStoppedError as exc:
        code, message = 3, str(exc)
    except Exception as exc:  # the sweep's own failure on this rank: the others still finish and merge
        code, message = 3, f"{type(exc).__name__}: {exc}"
    if message and not info.leader:
        Console(stderr=True).print(f"[rank {info.rank}] error: {message}", markup=False, highlight=False)
    mine_report = (code, message, str(part_path(out_path, info.rank)), count, runner.unavailable())
    try:
        reports = coordinator.gather(mine_report)
    except Exception as exc:  # a rank died: rank 0 still merges what every rank wrote and says what is missing
        if not info.leader:
            return RunOutcome(worst([code, 3]), "")
        gone = f"did not reach the end-of-run exchange (died?): {type(exc).__name__}"
        reports = [mine_report] + [(3, gone, str(part_path(out_path, r)), 0, {}) for r in range(1, info.world_size)]
        final, summary = _merge(request, runner, cases, previous, reports, out_path, run_id, started, err)
        return RunOutcome(worst([final, 3]), summary)
    final = 0
    summary = ""
    if info.leader:
        final, summary = _merge(request, runner, cases, previous, reports, out_path, run_id, started, err)
    final = coordinator.broadcast(final)
    return RunOutcome(final, summary)


def _merge(
    request: RunRequest,
    runner: Any,
    cases: list[Any],
    previous: list[Record],
    reports: list[tuple[int, str, str, int, dict[str, str]]],
    out_path: Path,
    run_id: str,
    started: float,
    err: Console,
) -> tuple[int, str]:
    """Rank 0: the parts appended to OUT in plan order, then the whole run's exit code and summary."""
    codes = [code for code, *_ in reports]
    unavailable: dict[str, str] = {}
    for rank, (code, message, part, count, missing) in enumerate(reports):
        unavailable.update(missing)
        if message and rank:
            err.print(f"rank {rank} stopped (exit {code}): {message}", markup=False, highlight=False)
        found = len(read_records(Path(part))) if Path(part).is_file() else 0
        if found < count:  # another node's file system: the records stay where that rank wrote them
            err.print(
                f"rank {rank} wrote {count} records to {part}, which rank 0 sees {found} of: a multi-node run "
                "needs --out on a file system every node shares; merge later with `harness run --resume OUT`",
                markup=False,
                highlight=False,
            )
            codes.append(3)
    parts = [p for p in part_files(out_path) if p.is_file()]
    try:
        merge_parts(out_path, [c.key for c in cases], parts)
    except OSError as exc:  # a full disk, /dev/full: the parts stay (deleted only after the merge), one line
        kept = ", ".join(str(p) for p in parts) or "no part file"
        err.print(
            f"error: cannot write results to {out_path}: {_os_error(exc, out_path)}; this run's records stay in "
            f"{kept}; `--resume {out_path}` merges them once {out_path} takes writes",
            markup=False,
            highlight=False,
        )
        return 3, ""
    recorded = {r.case.key: r for r in previous}  # resumed, then this run's (a rerun error's new record wins)
    if out_path.is_file():
        recorded.update({r.case.key: r for r in read_records(out_path) if r.run_id == run_id})
    everything = [recorded[c.key] for c in cases if c.key in recorded]
    missing = [c.key for c in cases if c.key not in recorded]
    if missing:  # a rank stopped or died before writing them: never a silent success
        err.print(
            f"error: {len(missing)} planned cases have no record (first: {missing[0]}); --resume {out_path} runs them",
            markup=False,
            highlight=False,
        )
        codes.append(3)
    if not everything:  # a run that recorded nothing never reports success
        err.print(f"error: nothing ran: none of {len(cases)} planned cases was recorded in {out_path}", markup=False)
        return worst([*codes, 3]), ""
    result = RunSummary()
    for record in everything:
        result.add(record.status)
    code = worst([*codes, result.exit_code])
    seconds = time.perf_counter() - started
    done = outcome(request, runner, everything, code, out_path, seconds, unavailable)  # a port verdict may raise it
    return done.exit_code, done.summary
