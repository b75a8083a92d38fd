"""The Ray driver's bookkeeping of a task's records (harness/ray_executor.py `claim`), without starting Ray: each
pending case taken once, a duplicate record logged and dropped, a record for a case the task was never given an
error naming its key (it used to end the driver with a bare StopIteration)."""

from __future__ import annotations

import logging

import pytest

from harness.ray_executor import GroupTask, RayTaskRecordError, claim, need_of
from harness.workload import Case


def _task(*backends: str) -> GroupTask:
    cases = [Case("attention.prefill", "tiny", "gqa", "float32", "normal", 0, b, "attention") for b in backends]
    return GroupTask(need_of({}, 1), cases, 0)


def test_each_case_is_taken_once_and_a_duplicate_is_logged_not_written(caplog: pytest.LogCaptureFixture) -> None:
    task = _task("torch-cpu", "cpu-reference")
    first, second = (c.key for c in task.cases)
    emitted: set[str] = set()
    assert claim(task, second, emitted) is not None  # records may arrive in any order
    case = claim(task, first, emitted)
    assert case is not None and case.key == first and task.cases == [] and emitted == {first, second}
    with caplog.at_level(logging.WARNING, logger="harness.ray_executor"):
        assert claim(task, first, emitted) is None  # a duplicate: nothing to write again
    assert f"second record for {first}" in caplog.text


def test_a_record_for_a_case_the_task_was_not_given_names_its_key() -> None:
    task = _task("torch-cpu")
    with pytest.raises(RayTaskRecordError, match=r"record for attention\.prefill/\S+@ort-cpu, a case it was not given"):
        claim(task, task.cases[0].key.replace("@torch-cpu", "@ort-cpu"), set())
    assert len(task.cases) == 1  # the task's own case is still pending
