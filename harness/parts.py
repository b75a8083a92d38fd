"""Per-rank part files of a sharded run: each rank streams its records to `OUT.rank-K.part` (a ResultWriter:
flushed per record, fsynced as the main file is), and rank 0 appends them to OUT in plan order at the end.

A rank killed mid-run leaves its part file; nothing reads a part file as finished until it is merged, so a later
`--resume OUT` (one process, or torchrun with any number of ranks) counts the records in OUT and in every
leftover part as done, and merges the parts at its end. A merge cut short (rank 0 killed while appending) is
finished by the next one: records already in OUT (same key, run id and time) are not appended twice.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path

from harness.results import UNFINISHED, Record, ResultWriter, iter_records

_PART = re.compile(r"\.rank-(\d+)\.part$")


def part_path(out: Path, rank: int) -> Path:
    """Where rank `rank` streams its records (beside OUT, so a shared filesystem holds both)."""
    return out.with_name(f"{out.name}.rank-{rank}.part")


def part_files(out: Path) -> list[Path]:
    """The part files of OUT that exist now, in rank order."""
    if not out.parent.is_dir():
        return []
    found = []
    for path in out.parent.glob(f"{glob.escape(out.name)}.rank-*.part"):
        match = _PART.search(path.name)
        if match and path.name == part_path(out, int(match.group(1))).name and path.is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def finished_with_parts(out: Path, *, rerun_errors: bool) -> dict[str, Record]:
    """`--resume OUT`: the latest record of each case key in OUT and in its leftover part files (read after
    OUT: a part holds later records), less the unfinished ones when `rerun_errors`."""
    latest: dict[str, Record] = {}
    for path in [out, *part_files(out)]:
        if path.exists():
            for record in iter_records(path):
                latest[record.case.key] = record
    return {k: r for k, r in latest.items() if not (rerun_errors and r.status in UNFINISHED)}


def _identity(record: Record) -> tuple[str, str, str]:
    return record.case.key, record.run_id, record.time_utc


def merge_parts(out: Path, plan_keys: Sequence[str], parts: Sequence[Path] | None = None) -> list[Record]:
    """Append the records of OUT's part files (all of them, or `parts`) to OUT in plan order (keys not in the
    plan last, in file order), leaving out those already there; then delete the parts. The records appended."""
    parts = part_files(out) if parts is None else list(parts)
    if not parts:
        return []
    seen = {_identity(r) for r in iter_records(out)} if out.is_file() else set()
    pending: list[Record] = []
    for path in parts:
        for record in iter_records(path):
            if _identity(record) not in seen:
                seen.add(_identity(record))
                pending.append(record)
    order = {key: i for i, key in enumerate(plan_keys)}
    pending.sort(key=lambda r: order.get(r.case.key, len(order)))  # stable: the rest keep their order
    with ResultWriter(out) as writer:
        for record in pending:
            writer.write(record)
    for path in parts:
        path.unlink(missing_ok=True)
    return pending
