"""Result records: streaming writes, truncated and malformed lines, schema versions, environment."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from harness.results import SCHEMA_VERSION, ResultsError, ResultWriter, host_environment, read_records


def record(i: int, status: str = "passed") -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": "r",
        "time_utc": "t",
        "case": {"key": f"k{i}"},
        "status": status,
    }


def test_each_record_is_on_disk_as_soon_as_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"
    writer = ResultWriter(path)
    writer.write(record(0))
    assert [r.case.key for r in read_records(path)] == ["k0"]  # before close
    writer.write(record(1))
    writer.close()
    with ResultWriter(path) as again:  # appends
        again.write(record(2))
    assert [r.case.key for r in read_records(path)] == ["k0", "k1", "k2"]


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + json.dumps(record(1))[:25])
    with caplog.at_level(logging.WARNING):
        assert [r.case.key for r in read_records(path)] == ["k0"]
    assert "truncated last record" in caplog.text


def test_malformed_middle_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(0)) + "\n{oops\n" + json.dumps(record(1)) + "\n")
    with pytest.raises(ResultsError, match=r"r.jsonl:2: not valid JSON"):
        read_records(path)


def test_newer_schema_and_bad_records_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**record(0), "schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(ResultsError, match="newer than this harness reads"):
        read_records(path)
    path.write_text(json.dumps({"status": "passed"}) + "\n")
    with pytest.raises(ResultsError, match="lacks required fields"):
        read_records(path)
    path.write_text(json.dumps(record(0, status="great")) + "\n")
    with pytest.raises(ResultsError, match="status 'great' is not one of"):
        read_records(path)


def test_host_environment_has_the_design_fields() -> None:
    env = host_environment()
    for key in ("host", "os", "cpu", "python", "torch", "numpy", "harness", "git_commit"):
        assert key in env
    json.dumps(env)


def test_appending_after_a_killed_writer_drops_the_partial_record(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + json.dumps(record(1))[:30])
    with ResultWriter(path) as writer:
        writer.write(record(2))
    assert [r.case.key for r in read_records(path)] == ["k0", "k2"]
