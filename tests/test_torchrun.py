"""`harness run` under torchrun (harness/sharded.py): two ranks over gloo give the single-process run's case keys
and verdicts in one JSONL; a rank killed mid-run loses nothing and `--resume` completes; and the pieces (the
sharding, the part-file merge, the rank environment) on their own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.parts import finished_with_parts, merge_parts, part_files, part_path
from harness.ranks import RankEnvironmentError, RankInfo
from harness.results import ResultWriter, read_records
from harness.shard import shard
from harness.workload import Case
from tests.conftest import PLUGINS
from tests.torchrun_launch import TORCHRUN, run_group

ROOT = Path(__file__).resolve().parents[1]
SELECTION = ("-w", "attention.prefill", "--preset", "tiny", "--parity-only")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def _harness(
    *args: str, ranks: int = 0, timeout: float = 120, monitor_s: float = 0.1
) -> subprocess.CompletedProcess[str]:
    """`harness run ARGS`, in one process or under torchrun with `ranks` ranks (torchrun checking its workers
    every `monitor_s`); the whole process group is killed on a timeout (torchrun's workers would outlive it)."""
    launcher = [*TORCHRUN, "--monitor-interval", str(monitor_s), "--nproc-per-node", str(ranks)]
    command = [*(launcher if ranks else [sys.executable]), "-m", "harness", "run", *args]
    return run_group(command, _env(), timeout)


def _verdicts(path: Path) -> list[tuple[str, str]]:
    return [(r.case.key, r.status) for r in read_records(path)]


@pytest.mark.slow
def test_two_ranks_match_the_single_process_run(tmp_path: Path) -> None:
    single, sharded = tmp_path / "single.jsonl", tmp_path / "sharded.jsonl"
    one = _harness(*SELECTION, "-b", "cpu-reference,torch-cpu", "--out", str(single), "--no-table")
    two = _harness(*SELECTION, "-b", "cpu-reference,torch-cpu", "--out", str(sharded), ranks=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(_verdicts(sharded)) == sorted(_verdicts(single))
    assert [k for k, _ in _verdicts(sharded)] == [k for k, _ in _verdicts(single)]  # merged in plan order
    assert len({r.run_id for r in read_records(sharded)}) == 1  # one run, whatever rank wrote the record
    assert not part_files(sharded)
    assert two.stdout.count("results:") == 1 and two.stdout.count("cpu-reference  ") == 1  # the summary once


@pytest.mark.slow
def test_a_killed_rank_loses_nothing_and_resume_completes(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    backends = ("-b", "cpu-reference,rank-killer-cpu", "--plugin", str(PLUGINS / "rank_killer.py"))
    # torchrun stops the other ranks once it sees one fail: checking every 5 s leaves rank 0 the time to merge
    killed = _harness(*SELECTION, *backends, "--out", str(out), ranks=2, monitor_s=5)
    assert killed.returncode != 0
    said = " ".join(killed.stderr.split())
    assert re.search(rf"\d+ planned cases have no record \(first: \S+\); --resume {re.escape(str(out))} runs", said)
    assert "rank : 0 (local_rank: 0) exitcode : 3" in said, said[-3000:]  # rank 0 merged and exited 3
    kept = {r.case.key for p in [out, *part_files(out)] if p.is_file() for r in read_records(p)}
    assert any(k.endswith("@rank-killer-cpu") for k in kept), said[-3000:]  # rank 1's records before it died
    resumed = _harness(*SELECTION, *backends, "--resume", str(out), "--no-table")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(kept)} cases already recorded" in " ".join(resumed.stderr.split())
    keys = [k for k, _ in _verdicts(out)]
    assert len(keys) == len(set(keys)) == 24 and kept <= set(keys)
    assert not part_files(out)


def _cases(groups: int, backends: tuple[str, ...] = ("a", "b"), workload: str = "w") -> list[Case]:
    return [
        Case(workload, "tiny", f"s{g}", "float32", "normal", 0, b, "attention") for g in range(groups) for b in backends
    ]


def test_shares_are_whole_groups_each_case_once_balanced_and_stable() -> None:
    cases = _cases(7)
    cost = {f"s{g}": float(10 - g) for g in range(7)}  # s0 the dearest
    shares = shard(cases, 3, lambda group: cost[group[0].shape])
    taken = [c for s in shares for c in s.cases]
    assert sorted(taken) == sorted(cases)  # every case once
    for s in shares:
        assert {c.shape for c in s.cases if c.backend == "a"} == {c.shape for c in s.cases if c.backend == "b"}
        assert list(s.cases) == sorted(s.cases, key=cases.index)  # plan order
    loads = [sum(cost[c.shape] for c in s.cases if c.backend == "a") for s in shares]
    assert max(loads) <= 19  # largest first to the least loaded: 19, 15, 15 (in plan order, round robin: 21)
    assert shard(cases, 3, lambda group: cost[group[0].shape]) == shares


def test_collective_groups_go_to_every_rank_and_only_rank_0_records_them() -> None:
    cases = _cases(2) + _cases(1, workload="dist")
    shares = shard(cases, 2, lambda group: 1.0, collective=lambda case: case.workload == "dist")
    dist_keys = {c.key for c in cases if c.workload == "dist"}
    for rank, share in enumerate(shares):
        assert dist_keys <= {c.key for c in share.cases}
        assert share.unrecorded == (dist_keys if rank else frozenset())
    assert sum(1 for s in shares for c in s.cases if c.workload == "w") == 4


def _record(key_shape: str, run_id: str = "r1", when: str = "t0") -> dict:
    case = Case("w", "tiny", key_shape, "float32", "normal", 0, "a", "attention")
    return {"schema_version": 1, "run_id": run_id, "time_utc": when, "case": case.to_record(), "status": "passed"}


def test_parts_merge_in_plan_order_once_and_count_as_done(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    with ResultWriter(out) as w:
        w.write(_record("s0"))
    with ResultWriter(part_path(out, 1)) as w:
        w.write(_record("s3"))
        w.write(_record("s1"))
    with ResultWriter(part_path(out, 0)) as w:
        w.write(_record("s2"))
    plan = [Case("w", "tiny", f"s{i}", "float32", "normal", 0, "a", "attention").key for i in range(4)]
    assert set(finished_with_parts(out, rerun_errors=False)) == set(plan)
    half_merged = [json.loads(line) for line in part_path(out, 1).read_text().splitlines()][:1]
    with ResultWriter(out) as w:  # a merge cut short: s3 already appended once
        w.write(half_merged[0])
    merge_parts(out, plan)
    assert [r.case.shape for r in read_records(out)] == ["s0", "s3", "s1", "s2"]
    assert not part_files(out)


def test_rank_environment() -> None:
    assert RankInfo.from_env({}) is None
    assert RankInfo.from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # a world of one: single-process
    info = RankInfo.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert info == RankInfo(3, 4, 1, 2, 0) and not info.leader
    with pytest.raises(RankEnvironmentError, match="RANK"):
        RankInfo.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(RankEnvironmentError, match="LOCAL_RANK='x'"):
        RankInfo.from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"})
