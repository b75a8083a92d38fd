"""Streaming JSONL I/O of result records (the schema, `Record`, is harness/record_schema.py).

One JSON object per case, appended and flushed as the case ends, so a crash loses at most the case in flight.
Readers skip a truncated last line (a killed writer) with a warning and refuse files from a newer schema.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from harness.host import host_environment  # noqa: F401 - re-exported: `harness env`, tests
from harness.record_schema import (  # noqa: F401 - re-exported: the schema's public home stays harness.results
    REQUIRED_FIELDS,
    RESULTS_ACCEPTED,
    SCHEMA_VERSION,
    STATUSES,
    Baseline,
    CaseRef,
    Layerwise,
    ParityRecord,
    Record,
    ResultsError,
    TimingRecord,
    VerdictRecord,
    validate_record,
)

log = logging.getLogger(__name__)

FSYNC_EVERY = 50


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _drop_partial_last_line(path: Path) -> None:
    """A killed writer can leave half a record at the end; appending after it would corrupt the next one."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping a truncated last record (%d bytes) before appending", path, len(data) - keep)
        fh.truncate(keep)


class ResultWriter:
    """Appends records to a JSONL file: flushed per record, fsynced periodically and on close."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            _drop_partial_last_line(self.path)
        self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._since_sync = 0
        self.count = 0

    def write(self, record: Record | Mapping[str, Any]) -> None:
        if self._fh is None:
            raise ResultsError(f"{self.path} is closed")
        data = record.to_dict() if isinstance(record, Record) else dict(record)
        self._fh.write(json.dumps(data, allow_nan=True, separators=(",", ":")) + "\n")
        self._fh.flush()
        self.count += 1
        self._since_sync += 1
        if self._since_sync >= FSYNC_EVERY:
            self._sync()

    def _sync(self) -> None:
        """fsync a regular file (a pipe or /dev/null cannot be synced, and need not be)."""
        assert self._fh is not None
        if self.path.is_file():
            os.fsync(self._fh.fileno())
        self._since_sync = 0

    def close(self) -> None:
        """Flush, sync and close; the file is closed even when the flush fails (a full disk), so a second
        close, or the garbage collector, does not try the failed write again."""
        if self._fh is None:
            return
        try:
            self._fh.flush()
            self._sync()
        except OSError:
            with contextlib.suppress(OSError):  # closing retries the failed flush; the first error is the one
                self._fh.close()
            self._fh = None
            raise
        self._fh.close()
        self._fh = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bad_line(path: Path, number: int, exc: ValueError, offset: int, records_before: int) -> ResultsError:
    """The one-line answer to a line that is not a record: the file is not a results file at all (nothing
    read before it), or one line of a results file is corrupt (a writer only ever leaves its LAST line cut)."""
    if isinstance(exc, UnicodeDecodeError):
        bad = exc.object[exc.start]
        what = f"not UTF-8 text (byte 0x{bad:02x} at offset {offset + exc.start})"
    else:
        assert isinstance(exc, json.JSONDecodeError)
        what = f"not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
    if not records_before:
        return ResultsError(f"{path}:{number}: not a harness results file: {what}; {RESULTS_ACCEPTED}")
    return ResultsError(
        f"{path}:{number}: {what}, after {records_before} good records; only a killed writer's last line may be cut: "
        f"repair or delete line {number}"
    )


def iter_records(path: Path) -> Iterator[Record]:
    """Validated records of a JSONL file; a truncated final line is skipped with a warning.

    Any other line that is not a record (not UTF-8, not JSON, not a record object) is refused naming FILE:LINE,
    the lines before it included: a corrupt middle line means the file was damaged or edited, and a report
    or a resume that quietly left it out would lose a case without a word.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ResultsError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")  # the last item is b"" when the file ends with a newline
    offset, good = 0, 0
    for number, raw in enumerate(lines, start=1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError, json.JSONDecodeError
            if number == len(lines) and raw.lstrip().startswith(b"{"):  # no newline after it: a killed writer
                log.warning("%s:%d: skipping a truncated last record (the writer was killed mid-line)", path, number)
                return
            raise _bad_line(path, number, exc, start, good) from None
        yield Record.from_dict(record, f"{path}:{number}")
        good += 1


def read_records(path: Path) -> list[Record]:
    return list(iter_records(path))


def read_some_records(path: Path) -> list[Record]:
    """The records of a file a command reads to report on (report, compare): a file with none is bad input,
    since a table or a comparison of nothing would look like a success."""
    records = read_records(path)
    if not records:
        raise ResultsError(f"{path} holds no records (empty, or only a cut last line); {RESULTS_ACCEPTED}")
    return records


UNFINISHED = ("error", "crashed", "timeout")


def finished_records(path: Path, *, rerun_errors: bool) -> dict[str, Record]:
    """For --resume: the latest record of each case key already in `path` that need not run again.

    Errored, crashed and timed-out cases count as finished unless `rerun_errors`.
    """
    latest: dict[str, Record] = {}
    if Path(path).exists():
        for record in iter_records(path):
            latest[record.case.key] = record
    return {k: r for k, r in latest.items() if not (rerun_errors and r.status in UNFINISHED)}
