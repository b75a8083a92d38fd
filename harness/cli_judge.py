"""`harness judge DUMP_DIR`: an msprobe dump judged op by op against the float64 oracle (harness.dump_judge)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from harness.cli_common import bad_input_exits, stdout_console
from harness.names import DEFAULT_AGAINST_RATIO, BadInputError

JUDGE_FORMATS = ("text", "json")


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def _first_failure(judgement: Any) -> dict[str, Any] | None:
    failed = judgement.failed
    if not failed:
        return None
    o = failed[0]
    return {"call": o.call.name, "op": o.op, "folder": o.dump, "reason": o.reason, "call_site": o.call.call_site}


def _summary(judgement: Any, out: Path) -> dict[str, Any]:
    return {
        "dump": str(judgement.directory),
        "against": None if judgement.against is None else str(judgement.against),
        "judged": len(judgement.judged),
        "passed": len(judgement.judged) - len(judgement.failed),
        "failed": len(judgement.failed),
        "errors": len(judgement.errors),
        "not_judged": dict(judgement.not_judged()),
        "first_failure": _first_failure(judgement),
        "ops": [
            {
                "call": o.call.name,
                "op": o.op,
                "status": o.status,
                "reason": o.reason,
                "rel_l2": None if o.metrics is None else o.metrics.rel_l2,
            }
            for o in judgement.ops
            if o.judged or o.status == "error"
        ],
        "results": str(out),
        "exit_code": judgement.exit_code,
    }


def _print_text(judgement: Any, out: Path) -> None:
    from rich.table import Table

    from harness.parity import RATIO_FLOOR

    console = stdout_console()
    against = judgement.against is not None
    title = f"harness judge {judgement.directory}" + (f" against {judgement.against}" if against else "")
    table = Table(title=title, title_justify="left")
    cols = ["#", "call", "op", "dtype", "shape", "verdict", "rel_l2", "budget", "worst row"]
    cols += ["source rel_l2", "ratio"] if against else []
    for col in [*cols, "reason"]:
        table.add_column(col, overflow="fold")
    for o in judgement.ops:
        if not (o.judged or o.status == "error"):
            continue
        m, b = o.metrics, o.budget
        row = [
            str(o.call.index),
            o.call.name,
            o.op,
            o.dtype,
            "x".join(map(str, o.shape)),
            "pass" if o.status == "passed" else o.status.upper(),
            _fmt(m and m.rel_l2),
            _fmt(b and b.rel_l2),
            _fmt(m and m.worst_row_rel_l2),
        ]
        if against:
            base = o.baseline
            ratio = None if base is None or m is None else m.rel_l2 / max(base.rel_l2, RATIO_FLOOR * b.rel_l2)
            row += [_fmt(base and base.rel_l2), _fmt(ratio)]
        table.add_row(*row, o.reason)
    console.print(table)
    skipped = judgement.not_judged()
    if skipped:
        names = ", ".join(f"{api} x{n}" for api, n in skipped.most_common())
        console.print(f"not judged: {sum(skipped.values())} calls ({names})", soft_wrap=True)
    first = _first_failure(judgement)
    if first:
        console.print(
            f"first failure: {first['call']} ({first['op']}) in {first['folder']}: {first['reason']}", soft_wrap=True
        )
        console.print(f"  called at {first['call_site'] or '(no stack.json entry)'}", soft_wrap=True)
    n, f = len(judgement.judged), len(judgement.failed)
    if not n:
        console.print("nothing judgeable in this dump: no call of the kernel contract was found (see 'not judged')")
    else:
        console.print(f"{n - f} of {n} judged ops passed, {f} failed; records in {out}")


@click.command("judge")
@click.argument("dump_dir", type=click.Path(path_type=Path))
@click.option(
    "--against",
    "against",
    type=click.Path(path_type=Path),
    default=None,
    help="A source dump of the same model: each op's error against the oracle is judged relative to the source's.",
)
@click.option(
    "--against-ratio",
    type=float,
    default=DEFAULT_AGAINST_RATIO,
    show_default=True,
    help="With --against: the largest allowed multiple of the source op's error.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSONL of per-op records (default results/runs/RUN_ID.jsonl).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(JUDGE_FORMATS),
    default="text",
    show_default=True,
    help="text: the per-op table; json: a summary object for CI bots.",
)
def judge_cmd(dump_dir: Path, against: Path | None, against_ratio: float, out: Path | None, fmt: str) -> None:
    """Judge an msprobe tensor dump (PrecisionDebugger, task 'tensor', level L0 or L1) against the float64 oracle.

    Exit 0 every judged op passed, 1 an op failed, 2 a missing or corrupt dump (the file is named), 3 nothing
    judgeable or an op that could not be recomputed."""
    from harness.dump_judge import judge_dump, records
    from harness.dump_read import read_dump
    from harness.results import ResultWriter, new_run_id

    with bad_input_exits():
        if against_ratio <= 0:
            raise BadInputError(f"--against-ratio must be > 0, got {against_ratio}")
        dumps = read_dump(dump_dir)
        sources = None
        if against is not None:
            sources = read_dump(against)
            if len(sources) != len(dumps):
                raise BadInputError(
                    f"{dump_dir} has {len(dumps)} step/rank folders and {against} has {len(sources)}; "
                    "--against needs dumps of the same steps and ranks"
                )
        judgement = judge_dump(dumps, dump_dir, sources=sources, against=against, ratio=against_ratio)
    run_id = new_run_id()
    out = out or Path("results") / "runs" / f"{run_id}.jsonl"
    try:
        with ResultWriter(out) as writer:
            for record in records(judgement, run_id):
                writer.write(record)
    except OSError as exc:
        click.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        sys.exit(3)
    if fmt == "json":
        click.echo(json.dumps(_summary(judgement, out), indent=1))
    else:
        _print_text(judgement, out)
    sys.exit(judgement.exit_code)
