"""A port verdict that cannot be fooled by cases nobody judged: a saved case whose inputs do not fit the workload
is an error naming the file and what did not fit (exit 3), never a skip; cases planned on the target with nothing
saved for them stay skips, but the verdict line counts them, and a verdict over no judged case is PORT NOT
JUDGED with exit 3, never PORT OK."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

LINEAR = ("-w", "linear.projection", "--preset", "tiny", "--distribution", "normal", "--parity-only")


def _joined(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-cpu's run of linear.projection tiny/proj in float32 and fp8 (ascend-sim cannot run fp8), saved."""
    from click.testing import CliRunner

    from harness.cli import main

    root = tmp_path_factory.mktemp("source")
    args = ["run", *LINEAR, "--shape", "proj", "--dtype", "float32,fp8", "-b", "torch-cpu", "--no-table"]
    result = CliRunner().invoke(main, [*args, "--save-outputs", str(root / "saved"), "--out", str(root / "a.jsonl")])
    assert result.exit_code == 0, result.output
    assert len(list((root / "saved").glob("*/torch-cpu.safetensors"))) == 2
    return root / "saved"


def _rewrite(folder: Path, change) -> Path:
    """Replace a saved case's inputs by `change(tensors)`, keeping the file's metadata (the reference's norm)."""
    path = folder / "inputs.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({n: t.contiguous() for n, t in change(load_file(str(path))).items()}, str(path), metadata=meta)
    return path


def _misfit(saved: Path, to: Path, change) -> Path:
    """A copy of the saved run whose float32 case's inputs were changed; the path of the changed file."""
    shutil.copytree(saved, to)
    return _rewrite(next(to.glob("linear.projection__tiny__proj__float32__*")), change)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda t: {**t, "w": t["w"][:, :-8]}, "got [32, 320] and [192, 312]"),  # K of w no longer K of x
        (lambda t: {"input": t["x"], "w": t["w"]}, "missing x; unknown input"),  # renamed
        (lambda t: {"x": t["x"].flatten(), "w": t["w"]}, "input x: expected 2 dims"),  # another rank
    ],
    ids=["shape", "name", "rank"],
)
def test_saved_inputs_that_do_not_fit_are_an_error_naming_the_file(harness_cli, saved, tmp_path, change, what):
    path = _misfit(saved, tmp_path / "misfit", change)
    run = harness_cli("run", *LINEAR, "--shape", "proj", "--dtype", "float32", "-b", "ascend-sim", "--against",
                      str(tmp_path / "misfit"))  # fmt: skip
    assert run.exit_code == 3, run.output
    (record,) = run.records
    assert record["status"] == "error"
    assert record["reason"].startswith(f"{path}: the saved inputs do not fit linear.projection (tiny/proj): ")
    assert what in record["reason"]
    assert "PORT NOT OK  ascend-sim against" in run.output and "PORT OK" not in run.output


def test_cases_not_judged_are_counted_on_the_verdict_line(harness_cli, saved) -> None:
    """proj float32 judged; square float32 not saved; both fp8 cases skipped here (ascend-sim has no FP8, which
    is known before any saved file is looked at)."""
    args = ("run", *LINEAR, "--shape", "proj,square", "--dtype", "float32,fp8", "-b", "ascend-sim")
    run = harness_cli(*args, "--against", str(saved))
    assert run.exit_code == 3, run.output  # a planned case the source never saved: the selection is not the port's
    assert "1 planned case not in the saved run (exit 3)" in run.output
    assert sorted(r["status"] for r in run.records) == ["passed", "skipped", "skipped", "skipped"]
    text = _joined(run.output)
    assert f"PORT OK ascend-sim against torch-cpu (saved in {saved}); 3 of 4 cases not judged" in text
    assert "1 of 4 cases within 2x of" in text
    assert "not judged: 1 not in the saved run, 2 skipped here (harness report lists why)" in text
    brief = harness_cli(*args, "--against", str(saved), "--no-table").output
    assert brief.startswith(f"PORT OK  ascend-sim against torch-cpu (saved in {saved}); 3 of 4 cases not judged\n")
    data = json.loads(harness_cli(*args, "--against", str(saved), "--summary-format", "json").result.stdout)
    (backend,) = data["backends"]
    port = backend["port"]
    assert (port["verdict"], port["not_judged"], port["not_saved"]) == ("PORT OK", 3, 1)
    assert data["exit_code"] == 3
    assert data["notes"][0].startswith("1 planned case not in the saved run (exit 3); select what")
    saved_only = harness_cli("run", *LINEAR, "--shape", "proj", "--dtype", "float32,fp8", "-b", "ascend-sim",
                             "--against", str(saved))  # fmt: skip
    assert saved_only.exit_code == 0, saved_only.output  # skipped here (no FP8 on this SoC) is a reasoned skip
    assert "1 of 2 cases not judged" in _joined(saved_only.output) and "not in the saved run" not in saved_only.output


def test_a_verdict_over_no_judged_case_is_not_ok_and_exits_3(harness_cli, saved) -> None:
    args = ("run", *LINEAR, "--shape", "square", "--dtype", "float32", "-b", "ascend-sim", "--against", str(saved))
    run = harness_cli(*args)
    assert run.exit_code == 3, run.output
    assert [r["status"] for r in run.records] == ["skipped"]
    assert "PORT OK" not in run.output
    assert "PORT NOT JUDGED ascend-sim against" in _joined(run.output)
    assert "not judged: 1 not in the saved run" in _joined(run.output)
    data = json.loads(harness_cli(*args, "--summary-format", "json").result.stdout)
    assert data["exit_code"] == 3 and data["backends"][0]["port"]["verdict"] == "PORT NOT JUDGED"


@pytest.mark.slow
def test_under_torchrun_a_verdict_over_no_judged_case_exits_3_too(saved, tmp_path) -> None:
    """Rank 0 of a sharded run exits with the port verdict's code as a one-process run does."""
    import os

    from tests.torchrun_launch import TORCHRUN, run_group

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])))
    args = (*LINEAR, "--shape", "square", "--dtype", "float32", "-b", "ascend-sim", "--against", str(saved))
    command = [*TORCHRUN, "--nproc-per-node", "2", "-m", "harness", "run", *args, "--out", str(tmp_path / "r.jsonl")]
    run = run_group(command, env, 150)
    assert "PORT NOT JUDGED  ascend-sim against" in run.stdout, run.stderr[-3000:]
    assert "exitcode  : 3" in run.stderr  # rank 0's code, as torchrun reports it (torchrun itself exits 1)
    assert run.returncode != 0


def test_a_hand_edited_ratio_judged_is_refused_not_read_as_true() -> None:
    """`"ratio_judged": "no"` is a truthy string: read as is, the case would count as ratio-judged."""
    from harness.names import BadInputError
    from harness.record_check import check_types

    class DamagedError(BadInputError):
        pass

    parity = {"verdict": {"passed": True, "failures": [], "mode": "against torch-cpu"}}
    baseline = {"backend": "torch-cpu", "source": "saved", "metrics": {}}
    check_types({"parity": {**parity, "baseline": {**baseline, "ratio_judged": False}}}, "f:1", DamagedError)
    with pytest.raises(DamagedError, match="ratio_judged must be true or false"):
        check_types({"parity": {**parity, "baseline": {**baseline, "ratio_judged": "no"}}}, "f:1", DamagedError)


def test_skips_not_in_the_saved_run_count_as_one_reason() -> None:
    """Each such reason names its case key; the summary counts them as the one reason they are."""
    from harness.saved import NOT_SAVED
    from harness.summary import RunFacts, render
    from tests.conftest import skipped_record

    records = [skipped_record(s, f"{NOT_SAVED}: saved has no saved inputs for w/tiny/{s}", "ascend-sim") for s in "abc"]
    text = " ".join(render(records, RunFacts("s", "o", 1.0), 80).split())
    assert f"skipped 3: {NOT_SAVED}" in text and "other reason" not in text
