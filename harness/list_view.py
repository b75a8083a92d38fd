"""`harness list` as text blocks for narrow terminals: below TABLE_WIDTH columns a table of seven columns folds
every cell to a few characters ("attent/ion", 500 lines at 80 columns); a block per backend and workload, with
its lists wrapped at word boundaries under a label, reads in a fraction of that and cuts nothing."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from harness.suites import BUILTIN_SUITES

TABLE_WIDTH = 120  # from this width on, `harness list` prints tables


def block(head: str, fields: Sequence[tuple[str, str]], width: int) -> list[str]:
    """`head` wrapped to `width`, then each (label, text) under it, indented, its text aligned after the label."""
    lines = textwrap.wrap(head, width, subsequent_indent="    ", break_on_hyphens=False) or [""]
    pad = max((len(label) for label, _ in fields), default=0)
    for label, text in fields:
        if not text:
            continue
        first = f"  {label:<{pad}}  "
        lines += textwrap.wrap(
            text, width, initial_indent=first, subsequent_indent=" " * len(first), break_on_hyphens=False
        )
    return lines


def section(title: str, blocks: Iterable[list[str]]) -> str:
    """A titled run of blocks, a blank line after it."""
    out = [title]
    for lines in blocks:
        out += lines
    return "\n".join(out) + "\n"


def render(registry: Any, workloads: Any, width: int) -> str:
    """Backends (state, device, the reason when unavailable; dtypes, ops), their options, workloads (op,
    description; shapes per preset) and the built-in suites, as blocks no wider than `width`."""
    from harness.backend_options import describe

    backends = []
    for name in registry.names():
        availability, caps = registry.probe(name), registry.get(name).capabilities()
        state = availability.state + (", simulated" if caps["simulated"] else "")
        head = f"{name}  {state}, {caps['device']}" + (f": {availability.reason}" if availability.reason else "")
        backends.append(block(head, [("dtypes", ", ".join(caps["dtypes"])), ("ops", ", ".join(caps["ops"]))], width))
    backends += [block(f"{name}  broken: {error}", [], width) for name, error in registry.load_errors.items()]
    options = [
        block(f"{key}  ({names}; default {default})", [("", text)], width)
        for key, names, default, text in describe(registry)
    ]
    works = []
    for name in workloads.names():
        w = workloads.get(name)
        presets = [(preset, ", ".join(shapes)) for preset, shapes in w.presets.items()]
        works.append(block(f"{name} ({w.op}): {w.description}", presets, width))
    text = section("backends", backends)
    if options:
        text += "\n" + section("backend options (harness run --backend-option [BACKEND:]KEY=VALUE)", options)
    text += "\n" + section("workloads (presets: shapes)", works)
    return (
        text
        + "\n"
        + section("suites", [block(f"{s.name}: {s.description}", [], width) for s in BUILTIN_SUITES.values()])
    )
