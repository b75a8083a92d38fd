"""pytest plugin (entry point `pytest11`): parity tests for users' CI, over every backend they select.

Options: --harness-backends a,b (default: every available backend), --harness-dtypes (default float32),
--harness-preset (default tiny). Fixtures:
- `harness_backend`: a Backend instance, the test parametrized over the selected backends; an unavailable one
  skips with its probe reason.
- `harness_reference`: the float64 oracle (harness.ops: attention, rms_norm, rope, swiglu, route, moe).
- `harness_dtype`: the test parametrized over --harness-dtypes (names: "float32", ...; the option takes torch's
  spelling too, "torch.float32"); `harness_torch_dtype`: the same as a torch.dtype. Either one can be passed as
  assert_parity's dtype.
- `harness_benchmark`: pytest-benchmark's `benchmark`, timing through the backend's synchronizing call, so
  --benchmark-json / --benchmark-compare measure device work, not just launches.
Marker `@pytest.mark.harness_workload("attention.*")`: one test per case (workload x shape x dtype x backend)
of the matching workloads; the test receives `harness_case` and calls `harness_case.check()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from harness import ops
from harness.backend import Backend, BackendRegistry, default_registry
from harness.dtypes import DTYPES, DtypeError, dtype_name
from harness.results import Record
from harness.runner import Runner, RunOptions
from harness.suites import Suite
from harness.timing import TimingConfig
from harness.workload import Case, WorkloadRegistry

REGISTRY_KEY = pytest.StashKey[BackendRegistry]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "backend parity (harness)")
    group.addoption(
        "--harness-backends", default="all", help="comma list of backends, 'all' (default) or 'devices' (accelerators)"
    )
    group.addoption("--harness-dtypes", default="float32", help="comma list of dtypes (default float32)")
    group.addoption("--harness-preset", default="tiny", help="shape preset for marker-generated cases")
    group.addoption("--harness-plugin", action="append", default=[], help="extra backend module or file")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "harness_workload(pattern): generate one parity test per case of the matching workloads"
    )
    _dtypes(config)  # a bad --harness-dtypes stops the session here, as a usage error, before collection


def _registry(config: pytest.Config) -> BackendRegistry:
    if REGISTRY_KEY not in config.stash:
        config.stash[REGISTRY_KEY] = default_registry(config.getoption("--harness-plugin"))
    return config.stash[REGISTRY_KEY]


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _dtypes(config: pytest.Config) -> list[str]:
    """--harness-dtypes as case dtype names; an unknown one stops the session naming the accepted ones."""
    try:
        return [dtype_name(d) for d in _split(config.getoption("--harness-dtypes"))]
    except DtypeError as exc:
        raise pytest.UsageError(f"--harness-dtypes: {exc}") from None


def _backends(config: pytest.Config) -> list[str]:
    registry = _registry(config)
    try:
        return registry.select(_split(config.getoption("--harness-backends")))
    except Exception as exc:
        raise pytest.UsageError(f"--harness-backends: {exc}") from None


@dataclass
class HarnessCase:
    """One generated parity case; `check()` runs it through the ordinary runner and asserts it passed."""

    case: Case
    runner: Runner

    def run(self) -> Record:
        return self.runner.run_one(self.case)

    def check(self) -> Record:
        record = self.run()
        if record.status == "skipped":
            pytest.skip(record.reason)
        assert record.status == "passed", f"{self.case.key}: {record.status}: {record.reason}"
        return record


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "harness_case" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("harness_workload")
        if marker is None:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: harness_case needs @pytest.mark.harness_workload")
        suite = Suite(
            "pytest",
            workloads=tuple(marker.args),
            presets=(config.getoption("--harness-preset"),),
            dtypes=tuple(_dtypes(config)),
            backends=tuple(_backends(config)),
            inputs=tuple(marker.kwargs.get("inputs", ("normal", "stress"))),
            timing=TimingConfig(),
        )
        runner = Runner(_registry(config), WorkloadRegistry.discover(), RunOptions(parity_only=True), "pytest")
        cases = runner.plan(suite)
        metafunc.parametrize("harness_case", [HarnessCase(c, runner) for c in cases], ids=[c.key for c in cases])
    if "harness_backend" in metafunc.fixturenames:
        metafunc.parametrize("harness_backend", _backends(config), indirect=True)
    if "harness_dtype" in metafunc.fixturenames:
        metafunc.parametrize("harness_dtype", _dtypes(config))


@pytest.fixture
def harness_backend(request: pytest.FixtureRequest) -> Backend:
    registry = _registry(request.config)
    name = request.param
    availability = registry.probe(name)
    if not availability.available:
        pytest.skip(f"{name} unavailable: {availability.reason}")
    return registry.create(name)


@pytest.fixture
def harness_torch_dtype(harness_dtype: str) -> Any:
    """The torch.dtype of `harness_dtype` (torch.float32 for "float32")."""
    return DTYPES[harness_dtype]


@pytest.fixture
def harness_reference() -> Any:
    """The float64 oracle: harness.ops (same op names and signatures as a backend's)."""
    return ops


@pytest.fixture
def harness_benchmark(request: pytest.FixtureRequest, harness_backend: Backend) -> Callable[..., Any]:
    """benchmark(fn, *args): pytest-benchmark timing of fn followed by the backend's synchronize()."""
    benchmark = request.getfixturevalue("benchmark")

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def synchronized() -> Any:
            result = fn(*args, **kwargs)
            harness_backend.synchronize()
            return result

        benchmark.extra_info["harness_backend"] = harness_backend.name
        benchmark.extra_info["harness_timer"] = harness_backend.timer().method
        return benchmark(synchronized)

    return run
