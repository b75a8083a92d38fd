"""The terminal side of a run: a one-line progress display (count, elapsed, ETA, and what runs now, down to a
slow phase such as an ONNX export), readable at 80 columns; plain logging where stderr is not a terminal.
A failing case localized by --layerwise gets one line, printed as it finishes, naming where it first diverges."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from harness import progress
from harness.port import divergence
from harness.summary import case_label

if TYPE_CHECKING:
    from harness.results import Record

log = logging.getLogger("harness")


def _what(case: Any) -> str:
    return f"{case.backend}: {case.workload} {case.preset}/{case.shape} {case.dtype} {case.inputs}"


class RunProgress:
    """Counts finished cases; names the case in flight and, when one is announced, the slow phase inside it."""

    def __init__(self, console: Console, total: int) -> None:
        self._case: Any = None
        self._progress = Progress(
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(compact=True),
            TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=console,
            transient=True,
            expand=True,
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task("planning", total=total)

    def started(self, case: Any) -> None:
        self._case = case
        self._progress.update(self._task, description=_what(case))

    def finished(self, case: Any, record: Record) -> None:
        self._progress.update(self._task, advance=1)
        where = divergence(record) if record.status == "failed" else None
        if where is not None:  # --layerwise: where it diverges, said now rather than only in harness report
            line = f"FAILED {case_label(record.case, backend=True)}: {where}"
            self._progress.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def phase(self, text: str) -> None:
        """A slow step inside the case in flight: "ort-cpu: exporting the moe graph (float16) for moe.layer"."""
        case = self._case
        where = f"{case.backend}: {text} for {case.workload} {case.dtype}" if case is not None else text
        self._progress.update(self._task, description=where)
        log.info("%s", where)

    @contextmanager
    def shown(self) -> Iterator[RunProgress]:
        with self._progress, progress.listening(self.phase):
            yield self
