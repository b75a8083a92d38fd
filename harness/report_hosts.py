"""`harness report --group-by host`: the report once per host that ran cases (environment.host, taken on the
node that ran each case, so a sweep over a Ray cluster says where each row's numbers come from). Markdown gets a
section per host; CSV one table with a leading `host` column."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable

from harness.names import BadInputError
from harness.results import Record

UNKNOWN = "unknown"  # records without a host: older files, or a case whose Ray task died before reporting


def host_of(record: Record) -> str:
    host = (record.environment or {}).get("host")
    return str(host) if host else UNKNOWN


def by_host(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Host -> its records, hosts in name order."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(host_of(record), []).append(record)
    return dict(sorted(groups.items()))


def render_by_host(records: Iterable[Record], fmt_name: str, render: Callable[[list[Record]], str]) -> str:
    """`render` (one format's report of some records) once per host."""
    groups = by_host(records)
    if fmt_name == "md":
        return "\n".join(f"## host {host} ({len(recs)} records)\n\n{render(recs)}" for host, recs in groups.items())
    if fmt_name == "csv":
        rows, names = [], ["host"]
        for host, recs in groups.items():
            for row in csv.DictReader(io.StringIO(render(recs))):
                rows.append({"host": host, **row})
                names += [n for n in row if n not in names]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=names, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    raise BadInputError(f"--group-by host: formats md and csv; not {fmt_name}")
