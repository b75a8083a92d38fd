"""Shared fixtures: the backend registry, a CLI runner that returns parsed records, plugin file paths."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from harness.backend import BackendRegistry, default_registry
from harness.cli import main

pytest_plugins = ["pytester"]

try:  # the property tests' library; a GPU image without the test extra still runs the cuda tests (gpu_pending.sh)
    from hypothesis import settings
except ImportError:
    pass
else:
    settings.register_profile("harness", deadline=None)  # a shared 2-core machine: no per-example deadline
    settings.load_profile("harness")

PLUGINS = Path(__file__).parent / "plugins"
# The planted faults (the fault plugin's backends, not installed with harness), loaded by path
FAULTS = str(Path(__file__).resolve().parents[1] / "faults" / "harness_faults" / "backends.py")
FAULT_CHECKS = str(Path(FAULTS).with_name("checks.py"))  # the fault plugin module `harness selftest --faults` takes


@dataclass
class CliRun:
    result: Result
    records: list[dict[str, Any]]

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def output(self) -> str:
        return self.result.output

    def by_key(self) -> dict[str, dict[str, Any]]:
        return {r["case"]["key"]: r for r in self.records}


@pytest.fixture(autouse=True)
def _no_inherited_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped tables follow COLUMNS: a width exported in the caller's shell must not reach tests that read rows
    (a test that wants a width sets it)."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(scope="session")
def registry() -> BackendRegistry:
    return default_registry()


def compile_latex(table: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """A booktabs table compiled with pdflatex in a landscape page: what a paper's build does with it."""
    doc = folder / "t.tex"
    doc.write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\usepackage[margin=1cm,landscape]{geometry}"
        "\\begin{document}\\tiny " + table + "\\end{document}"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", doc.name], cwd=folder, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and (folder / "t.pdf").exists(), proc.stdout[-2000:]
    return proc


def plugin(name: str) -> str:
    return str(PLUGINS / f"{name}.py")


@pytest.fixture
def harness_cli(tmp_path: Path):
    """Invoke `harness ARGS...`; for `run`, results go to a fresh file whose records are returned."""

    def invoke(*args: str, out: Path | None = None) -> CliRun:
        argv = list(args)
        if "--resume" in argv:
            out = Path(argv[argv.index("--resume") + 1])
        elif argv and argv[0] == "run" and "--out" not in argv:
            out = out or tmp_path / f"run{len(list(tmp_path.glob('run*.jsonl')))}.jsonl"
            argv += ["--out", str(out)]
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
        records = []
        if out is not None and out.exists():
            records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        return CliRun(result, records)

    return invoke


def skipped_record(shape: str, reason: str, backend: str = "torch-cpu") -> Any:
    """A skipped case's Record as `harness run` writes it, for tests of what readers make of skips."""
    from harness.results import SCHEMA_VERSION, Record

    key = f"w/tiny/{shape}/float32/normal/seed0@{backend}"
    case = dict(workload="w", preset="tiny", shape=shape, dtype="float32", inputs="normal", seed=0)
    return Record.from_dict(
        dict(case={**case, "backend": backend, "key": key}, status="skipped", reason=reason, parity=None,
             timing=None, schema_version=SCHEMA_VERSION, run_id="r", time_utc="t")
    )  # fmt: skip
