"""Hostile inputs under torchrun (issue 15 on the sharded path): a usage error is one line, not one per rank; a
results file that refuses the merge is one line naming it, the parts kept and `--resume` merging them; a rank
that torchrun stops before it ran anything (another rank failed) says nothing of its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.parts import part_files
from harness.results import read_records
from tests.torchrun_launch import ROOT, TORCHRUN, run_group

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="torchrun's gloo launch and the supervisor are Linux-only"),
]

TINY = ("-w", "attention.prefill", "--preset", "tiny", "--shape", "gqa", "--dtype", "float32")
TINY += ("--distribution", "normal", "--seeds", "0", "-b", "cpu-reference,torch-cpu", "--parity-only", "--no-table")
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return {**env, **extra}


def _two_ranks(*args: str) -> tuple[str, dict[int, int]]:
    """`torchrun --nproc-per-node 2 -m harness run ARGS`: stderr (whitespace folded) and each rank's exit code
    as torchrun reports them."""
    command = [*TORCHRUN, "--monitor-interval", "5", "--nproc-per-node", "2", "-m", "harness", "run", *args]
    done = run_group(command, _env(), timeout=120)
    said = " ".join(done.stderr.split())
    codes = {int(r): int(c) for r, c in re.findall(r"rank : (\d) \(local_rank: \d\) exitcode : (\d+)", said)}
    return said, codes


def _harness_frames(said: str) -> list[str]:
    """Traceback frames in harness's own modules (torchrun's ChildFailedError traceback is torchrun's)."""
    return re.findall(r'File "[^"]*/harness/(?:cli|sharded|launch|supervise|ranks|parts)\w*\.py"', said)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--time-budget", "-1"), "error: --time-budget -1.0: expected a positive number of seconds"),
        (("--bogus", "1"), "Error: No such option '--bogus'"),
        (("--suite", "SUITE"), "is not UTF-8 text (byte 0xff at offset"),
    ],
    ids=["bad-value", "unknown-option", "non-utf8-suite"],
)
def test_a_usage_error_is_said_once_and_every_rank_exits_2(tmp_path: Path, args: tuple[str, ...], line: str) -> None:
    suite = tmp_path / "bad.toml"
    suite.write_bytes(b'[run]\nworkloads = ["attention.prefill"]\n# caf\xff\xfe\n')
    args = tuple(str(suite) if a == "SUITE" else a for a in args)
    said, codes = _two_ranks(*TINY, *args, "--out", str(tmp_path / "r.jsonl"))
    assert said.count(line) == 1, said[-3000:]
    assert codes == {0: 2, 1: 2}, said[-3000:]
    assert not _harness_frames(said) and "killed by SIGTERM" not in said


def test_a_results_file_that_refuses_the_merge_is_one_line_and_resume_merges_the_parts(tmp_path: Path) -> None:
    out = tmp_path / "full.jsonl"
    out.symlink_to("/dev/full")  # the ranks' parts are written beside it; the merge into it fails (ENOSPC)
    two = (*TINY[:5], "gqa,mqa", *TINY[6:])  # two groups: one per rank
    said, codes = _two_ranks(*two, "--out", str(out))
    assert said.count(f"error: cannot write results to {out}: No space left on device") == 1, said[-3000:]
    assert f"`--resume {out}` merges them" in said
    assert codes == {0: 3, 1: 3}, said[-3000:]
    assert "gloo" not in said and not _harness_frames(said)
    parts = part_files(out)
    assert sum(len(read_records(p)) for p in parts) == 4  # every record of the run kept in the parts
    out.unlink()
    resumed = run_group([sys.executable, "-m", "harness", "run", *two, "--resume", str(out)], _env(), timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(read_records(out)) == 4 and not part_files(out)


SLOW_IMPORT = """
import time
from pathlib import Path
Path(__file__).with_name("importing").touch()
time.sleep(60)
"""


def test_a_rank_stopped_before_its_first_case_leaves_the_word_to_the_rank_that_failed(tmp_path: Path) -> None:
    """torchrun SIGTERMs the other ranks once one exits non-zero: a rank that had not begun (loading plugins)
    has nothing to add to the failing rank's line. Rank 0 still says it was killed."""
    plugin = tmp_path / "slow_import.py"
    plugin.write_text(SLOW_IMPORT)
    said = {}
    for rank in (1, 0):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        cmd = [sys.executable, "-m", "harness", "run", *TINY, "--plugin", str(plugin), "--out", str(tmp_path / "r")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not (tmp_path / "importing").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the plugin was never imported"
            time.sleep(0.05)
        (tmp_path / "importing").unlink()
        proc.send_signal(signal.SIGTERM)  # as torchrun stops it: forwarded to the process running the sweep
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        said[rank] = err
    assert said[1] == "", said[1]
    assert "error: harness run was killed by SIGTERM before its first case" in said[0]
