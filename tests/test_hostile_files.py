"""Hostile files given to the readers (issue 15): suite files, results files, --against directories.

Each is answered with one line naming the file and what is accepted, exit 2 (bad input) or 3 (a case could
not run), no traceback, and nothing written before lost. The fuzz tests at the end throw random bytes, random
JSON lines and cut records at `harness report`, `harness compare`, `harness run --resume` and `--suite`
(30 examples each; HARNESS_FUZZ_EXAMPLES=1000 for a longer hunt).
"""

from __future__ import annotations

import itertools
import json
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.results import read_records

# one tiny case per backend: attention.prefill tiny/gqa float32 normal seed 0
TINY = ("-w", "attention.prefill", "--preset", "tiny", "--shape", "gqa", "--dtype", "float32")
TINY += ("--distribution", "normal", "--seeds", "0")
FAST = (*TINY, "--parity-only")


def cli(*args: str | Path) -> Result:
    """`harness ARGS` as a user types it; an exception escaping the command is kept in the result, not raised."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_answered(result: Result, code: int, *named: str | Path) -> str:
    """Exit `code`, no traceback, and (for exit 2) one `error:` line naming each of `named`; the line returned."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if code != 2:
        return ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for name in named:
        assert str(name) in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results file of two backends, torch-cpu timed (a baseline for speedups), cpu-reference not."""
    path = tmp_path_factory.mktemp("timed") / "timed.jsonl"
    result = cli("run", *TINY, "-b", "torch-cpu,cpu-reference", "--time-budget", "0.01", "--out", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch-cpu's inputs and outputs of two case groups (gqa and mqa), written with --save-outputs."""
    root = tmp_path_factory.mktemp("saved")
    args = [a if a != "gqa" else "gqa,mqa" for a in FAST]
    result = cli("run", *args, "-b", "torch-cpu", "--save-outputs", root / "dir", "--out", root / "s.jsonl")
    assert result.exit_code == 0, result.output
    return root / "dir"


# ----- 1. suite files -----
def test_a_suite_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    suite = tmp_path / "bad.toml"
    suite.write_bytes(b'name = "x"\ndtypes = ["float32\xff\xfe"]\n')
    out = tmp_path / "r.jsonl"
    line = assert_answered(cli("run", "--suite", suite, *FAST, "-b", "torch-cpu", "--out", out), 2, f"{suite}:2")
    assert "not UTF-8" in line and "byte 0xff" in line
    assert not out.exists()


# ----- 2. results files that are not results files -----
def binary(path: Path) -> Path:
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3)  # a JPEG's start, NUL, newlines
    return path


def test_a_binary_file_is_not_a_results_file_for_report_compare_or_resume(tmp_path: Path, timed: Path) -> None:
    bad = binary(tmp_path / "bin.jsonl")
    before = bad.read_bytes()
    for args in (("report", bad), ("compare", timed, bad), ("compare", bad, timed)):
        line = assert_answered(cli(*args), 2, bad)
        assert "not a harness results file" in line and "not UTF-8" in line
    line = assert_answered(cli("run", *FAST, "-b", "torch-cpu", "--resume", bad), 2, bad)
    assert "not a harness results file" in line
    assert bad.read_bytes() == before  # nothing appended to (or cut from) a file that is not ours


def test_a_text_file_that_is_not_jsonl_is_named(tmp_path: Path) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\nabout the run\n")
    line = assert_answered(cli("report", notes), 2, f"{notes}:1")
    assert "not a harness results file" in line and "JSONL" in line


def test_a_corrupt_middle_line_is_refused_naming_file_and_line(tmp_path: Path, timed: Path) -> None:
    """Decided: a results file whose middle line is not a record is bad input (exit 2, FILE:LINE), never read
    around: a writer only cuts its last line, so a corrupt middle line is damage a report would hide."""
    lines = timed.read_text().splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(lines[0] + '{"schema_version": 2, "run\n' + "".join(lines[1:]))
    before = damaged.read_bytes()
    line = assert_answered(cli("report", damaged), 2, f"{damaged}:2")
    assert "repair or delete line 2" in line
    assert_answered(cli("run", *FAST, "-b", "torch-cpu", "--resume", damaged), 2, f"{damaged}:2")
    assert damaged.read_bytes() == before


def test_a_cut_last_line_is_still_read_around(tmp_path: Path, timed: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = timed.read_text()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text + text.splitlines()[0][:40])
    result = cli("report", cut)
    assert_answered(result, 0)
    assert f"{cut}:3: skipping a truncated last record" in caplog.text and "torch-cpu" in result.stdout


# ----- 3. files of no records, runs of no common case -----
def test_report_and_compare_of_a_file_of_no_records_exit_2(tmp_path: Path, timed: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cut_only = tmp_path / "cut-only.jsonl"
    cut_only.write_text(timed.read_text()[:50])  # a writer killed in its first record
    for bad in (empty, cut_only):
        assert "holds no records" in assert_answered(cli("report", bad), 2, bad)
        assert_answered(cli("report", timed, bad), 2, bad)  # one empty file among others is named too
        assert_answered(cli("compare", timed, bad), 2, bad)


def test_compare_of_runs_with_no_case_in_common_names_both_and_what_differs(tmp_path: Path, timed: Path) -> None:
    torch_only, reference_only = tmp_path / "torch.jsonl", tmp_path / "ref.jsonl"
    lines = timed.read_text().splitlines(keepends=True)
    torch_only.write_text("".join(line for line in lines if "@torch-cpu" in line))
    reference_only.write_text("".join(line for line in lines if "@cpu-reference" in line))
    line = assert_answered(cli("compare", torch_only, reference_only), 2, torch_only, reference_only)
    assert "share no case" in line and "backend torch-cpu vs cpu-reference" in line
    assert_answered(cli("compare", timed, torch_only), 0)  # one common case is enough


# ----- 4. report --baseline -----
def test_baseline_adds_speedups_to_markdown_csv_and_html(tmp_path: Path, timed: Path) -> None:
    """A paper author who asks for a baseline expects speedups in every format, not only in LaTeX."""
    md = cli("report", timed, "--baseline", "torch-cpu")
    assert_answered(md, 0)
    header, _, torch_row, reference_row = md.stdout.splitlines()[:4]
    assert "| median us | speedup vs torch-cpu |" in header
    assert "| 1.00x |" in (torch_row if "torch-cpu" in torch_row else reference_row)
    assert "Geometric mean speedup vs torch-cpu: torch-cpu 1.00x" in md.stdout
    csv_text = cli("report", timed, "--baseline", "torch-cpu", "--format", "csv").stdout
    assert csv_text.splitlines()[0].endswith(",speedup_vs_torch-cpu")
    html_text = cli("report", timed, "--baseline", "torch-cpu", "--format", "html").stdout
    assert "<th>speedup vs torch-cpu</th>" in html_text
    assert "speedup" not in cli("report", timed).stdout  # no baseline, no column


def test_baseline_must_be_a_timed_backend_of_the_files(tmp_path: Path, timed: Path) -> None:
    for fmt in ("md", "latex"):
        line = assert_answered(cli("report", timed, "--baseline", "cuda", "--format", fmt), 2, "--baseline 'cuda'")
        assert "they hold: cpu-reference, torch-cpu" in line
    line = assert_answered(cli("report", timed, "--baseline", "cpu-reference"), 2, "--baseline 'cpu-reference'")
    assert "none of its records is timed" in line


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("option", ["--plots", "--output"])
def test_an_output_that_cannot_be_written_exits_2_naming_it(
    tmp_path: Path, timed: Path, command: str, option: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    where = blocker / "plots"  # under a file: refused as a read-only or full file system would be
    files = (timed,) if command == "report" else (timed, timed)
    result = cli(command, *files, option, where)
    line = assert_answered(result, 2, f"{option} {where}: cannot write there")
    assert "Not a directory" in line


# ----- 5. --against DIR with a corrupt file -----
def corrupt_copy(saved: Path, tmp_path: Path, name: str, content: bytes) -> tuple[Path, Path]:
    """A copy of the saved directory with `name` of its mqa group replaced by `content`: (root, that file)."""
    root = tmp_path / "against"
    for src in saved.rglob("*.safetensors"):
        dst = root / src.relative_to(saved)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    [folder] = [p for p in root.iterdir() if "__mqa__" in p.name]
    (folder / name).write_bytes(content)
    return root, folder / name


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("inputs.safetensors", b"\x00garbage" * 20, "is not a safetensors file"),
        ("torch-cpu.safetensors", b"not a tensor file\n", "is not a safetensors file"),
    ],
)
def test_a_corrupt_against_file_errors_its_group_alone(
    tmp_path: Path, saved: Path, name: str, content: bytes, says: str
) -> None:
    root, bad = corrupt_copy(saved, tmp_path, name, content)
    out = tmp_path / "r.jsonl"
    both = [a if a != "gqa" else "gqa,mqa" for a in FAST]
    result = cli("run", *both, "-b", "torch-cpu,cpu-reference", "--against", root, "--out", out)
    assert_answered(result, 3)
    records = {r.case.key: r for r in read_records(out)}
    assert len(records) == 4  # the sweep went on past the broken group
    for key, record in records.items():
        if "/mqa/" in key:
            assert record.status == "error" and str(bad) in record.reason and says in record.reason
            assert "Traceback" not in record.reason
        else:
            assert record.status == "passed", record.reason


def test_a_saved_output_of_the_wrong_tensor_or_shape_names_the_file(tmp_path: Path, saved: Path) -> None:
    from safetensors.torch import save_file
    from torch import zeros

    root, bad = corrupt_copy(saved, tmp_path, "torch-cpu.safetensors", b"")
    for tensors, says in (({"x": zeros(3)}, "holds no tensor 'out' (it holds: x)"), ({"out": zeros(3)}, "[3]")):
        save_file(tensors, str(bad))
        out = tmp_path / f"r{len(says)}.jsonl"
        mqa = [a if a != "gqa" else "mqa" for a in FAST]
        assert_answered(cli("run", *mqa, "-b", "cpu-reference", "--against", root, "--out", out), 3)
        [record] = read_records(out)
        assert record.status == "error" and str(bad) in record.reason and says in record.reason


# ----- 6. fuzz: random bytes, random JSON lines, cut records -----
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _fields(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Every (object, key) of a JSON record, nested objects included (not the free-form environment)."""
    for key, value in data.items():
        yield data, key
        if isinstance(value, dict) and key != "environment":
            yield from _fields(value)


def mutated(draw: st.DrawFn, line: str) -> bytes:
    """A real record with 1-3 fields at any depth dropped or replaced by random JSON values."""
    record = json.loads(line)
    for _ in range(draw(st.integers(1, 3))):
        parent, field = draw(st.sampled_from(list(_fields(record))))
        if draw(st.booleans()):
            del parent[field]
        else:
            parent[field] = draw(json_values)
    return json.dumps(record).encode() + b"\n"


@st.composite
def results_files(draw: st.DrawFn, good_lines: list[str]) -> bytes:
    """Bytes a results file might hold: real records with one damaged (most often: readers must check every
    field), or a mix of real and damaged records, random JSON, random bytes; either may end in a cut line."""
    if draw(st.booleans()):
        lines = [line.encode() for line in good_lines]
        victim = draw(st.integers(0, len(lines) - 1))
        lines[victim] = mutated(draw, good_lines[victim])
        parts = lines
    else:
        parts = []
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["good", "mutated", "json", "bytes"]))
            if kind == "good":
                parts.append(draw(st.sampled_from(good_lines)).encode())
            elif kind == "mutated":
                parts.append(mutated(draw, draw(st.sampled_from(good_lines))))
            elif kind == "json":
                parts.append(json.dumps(draw(json_values)).encode() + b"\n")
            else:
                parts.append(draw(st.binary(max_size=40)) + b"\n")
    if draw(st.booleans()):  # a writer killed mid-line
        line = draw(st.sampled_from(good_lines)).encode()
        parts.append(line[: draw(st.integers(1, len(line) - 2))])
    return b"".join(parts)


FUZZ = settings(
    max_examples=int(os.environ.get("HARNESS_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
counter = itertools.count()


@pytest.fixture(scope="module")
def good_lines(timed: Path) -> list[str]:
    return timed.read_text().splitlines(keepends=True)


def written(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"f{next(counter)}.jsonl"
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.data())
def test_fuzz_report_and_compare_answer_every_file(tmp_path: Path, good_lines: list[str], data: st.DataObject) -> None:
    old = written(tmp_path, data.draw(results_files(good_lines)))
    new = written(tmp_path, data.draw(results_files(good_lines)))
    latex = ("report", old, "--format", "latex", "--baseline", "torch-cpu")
    for args in (("report", old), latex, ("compare", old, new)):
        result = cli(*args)
        assert result.exit_code in (0, 1, 2, 3), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output


@FUZZ
@given(data=st.data())
def test_fuzz_resume_keeps_the_file_valid(tmp_path: Path, good_lines: list[str], data: st.DataObject) -> None:
    """Whatever the file holds, --resume either refuses it untouched (exit 2) or leaves a valid JSONL file."""
    path = written(tmp_path, data.draw(results_files(good_lines)))
    before = path.read_bytes()
    mqa = [a if a != "gqa" else "mqa" for a in FAST]  # a case the good lines do not hold: one runs and appends
    result = cli("run", *mqa, "-b", "torch-cpu", "--resume", path, "--no-table")
    assert result.exit_code in (0, 1, 2, 3), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert path.read_bytes() == before
    else:
        assert any("/mqa/" in r.case.key for r in read_records(path))


toml_pieces = st.sampled_from(
    ['name = "x"\n', "dtypes = [", '"float32"', "]\n", "seeds = [-1]\n", "threads = 0\n", "[timing]\n",
     "budget_s = 0\n", "workloads = 3\n", "=", "[[", '"', "\n", "bogus = 1\n", 'backend_options = ["a"]\n']
)  # fmt: skip


@FUZZ
@given(pieces=st.lists(toml_pieces | st.text(string.printable, max_size=10), max_size=8), noise=st.binary(max_size=6))
def test_fuzz_suite_files_are_answered(tmp_path: Path, pieces: list[str], noise: bytes) -> None:
    suite = tmp_path / f"s{next(counter)}.toml"
    suite.write_bytes("".join(pieces).encode() + noise)
    out = tmp_path / f"s{next(counter)}.jsonl"
    result = cli("run", "--suite", suite, *FAST, "-b", "torch-cpu", "--out", out, "--no-table")
    assert result.exit_code in (0, 1, 2, 3), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert str(suite) in result.stderr, result.stderr  # the only input that can be wrong here
