"""Result records: the versioned schema, streaming JSONL I/O, and environment capture.

One JSON object per case, appended and flushed as the case ends, so a crash loses at most the case in flight.
Readers skip a truncated last line (a killed writer) with a warning and refuse files from a newer schema.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from harness.names import DIST_NAME, BadInputError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("passed", "failed", "skipped", "error", "crashed", "timeout")
REQUIRED_FIELDS = ("schema_version", "run_id", "time_utc", "case", "status")
FSYNC_EVERY = 50


class ResultsError(BadInputError):
    """A results file that cannot be read: malformed line, missing fields, newer schema."""


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() or None
    return f"{commit}+dirty" if commit and dirty.stdout.strip() else commit


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def host_environment() -> dict[str, Any]:
    """What every record carries about the host: machine, Python, core libraries, the project's git commit."""
    import numpy
    import torch

    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "harness": _version(DIST_NAME),
        "git_commit": _git_commit(),
    }


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

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            raise ResultsError(f"{self.path} is closed")
        self._fh.write(json.dumps(record, allow_nan=True, separators=(",", ":")) + "\n")
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
        if self._fh is not None:
            self._fh.flush()
            self._sync()
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def validate_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ResultsError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ResultsError(f"{where}: record lacks required fields {missing}")
    version = record["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: schema_version {version!r} is newer than this harness reads ({SCHEMA_VERSION}); upgrade harness"
        )
    if record["status"] not in STATUSES:
        raise ResultsError(f"{where}: status {record['status']!r} is not one of: {', '.join(STATUSES)}")
    return record


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Validated records of a JSONL file; a truncated final line is skipped with a warning."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError as exc:
        raise ResultsError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s:%d: skipping a truncated last record (the writer was killed mid-line)", path, number)
                return
            raise ResultsError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        yield validate_record(record, f"{path}:{number}")


def read_records(path: Path) -> list[dict[str, Any]]:
    return list(iter_records(path))


UNFINISHED = ("error", "crashed", "timeout")


def finished_records(path: Path, *, rerun_errors: bool) -> dict[str, dict[str, Any]]:
    """For --resume: the latest record of each case key already in `path` that need not run again.

    Errored, crashed and timed-out cases count as finished unless `rerun_errors`.
    """
    latest: dict[str, dict[str, Any]] = {}
    if Path(path).exists():
        for record in iter_records(path):
            latest[record["case"]["key"]] = record
    return {k: r for k, r in latest.items() if not (rerun_errors and r["status"] in UNFINISHED)}
