"""The result record's schema: `Record` and its typed sections, read from any schema version up to
SCHEMA_VERSION and written back as one JSON object (harness/results.py streams them to and from JSONL).

Schema history: 1 the first; 2 adds `backend_options` (read from a version-1 line as {}). `parity.invariance`
(--invariance) is a parity details section like `routing`: no version change, absent from older files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from harness.names import BadInputError
from harness.parity import Budget, Failure, Metrics
from harness.parity_llm import OpError
from harness.record_check import check_types

SCHEMA_VERSION = 2
STATUSES = ("passed", "failed", "skipped", "error", "crashed", "timeout")
REQUIRED_FIELDS = ("schema_version", "run_id", "time_utc", "case", "status")
RESULTS_ACCEPTED = "a results file is JSONL, one record per line, as `harness run --out` writes it"


class ResultsError(BadInputError):
    """A results file that cannot be read: malformed line, missing fields, newer schema."""


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are fields of the dataclass `cls` (a reader ignores what it does not know)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class CaseRef:
    """The case a record is about (its `case` section): `key` is what resume, compare and --against match on."""

    key: str
    workload: str
    op: str
    preset: str
    shape: str
    dtype: str
    inputs: str
    seed: int
    backend: str

    @property
    def input_key(self) -> str:
        """The key without the backend: the cases that share inputs and a reference."""
        return self.key.rsplit("@", 1)[0]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseRef:
        """A `case` section; fields a hand-written line leaves out are read from its key where it has them."""
        key = str(data["key"])
        head, _, backend = key.partition("@")
        parts = head.split("/")
        parsed: dict[str, Any] = {"backend": backend}
        if len(parts) == 6:
            parsed.update(zip(("workload", "preset", "shape", "dtype", "inputs"), parts[:5], strict=True))
            parsed["seed"] = int(parts[5][4:]) if parts[5][4:].isdigit() else 0
        defaults = {f.name: "" for f in fields(cls)} | {"seed": 0, "op": ""}
        return cls(**{**defaults, **parsed, **_known(cls, data)})


def _metrics(data: Mapping[str, Any]) -> Metrics:
    return Metrics(**_known(Metrics, data))


def _failure(data: Mapping[str, Any]) -> Failure:
    return Failure(**_known(Failure, data))


@dataclass(frozen=True)
class VerdictRecord:
    """The parity verdict: failures over budget and the check closest to (or furthest over) its budget."""

    passed: bool
    mode: str = "reference"
    reason: str = ""
    failures: tuple[Failure, ...] = ()
    worst: Failure | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerdictRecord:
        worst = data.get("worst")
        return cls(
            bool(data["passed"]),
            data.get("mode", "reference"),
            data.get("reason", ""),
            tuple(_failure(f) for f in data.get("failures") or ()),
            None if worst is None else _failure(worst),
        )

    def to_dict(self) -> dict[str, Any]:
        worst = None if self.worst is None else {**asdict(self.worst), "ratio": self.worst.ratio}
        return {
            "passed": self.passed,
            "mode": self.mode,
            "reason": self.reason,
            "failures": [asdict(f) for f in self.failures],
            "worst": worst,
        }


@dataclass(frozen=True)
class Baseline:
    """What an `--against` verdict compared with: the baseline backend's primary metrics and where they came from."""

    backend: str
    source: str  # "this run", or the --save-outputs directory
    metrics: Metrics
    ratio_judged: bool = True  # False (then written): only the workload's own checks were (LLM logits)


@dataclass(frozen=True)
class Layerwise:
    """Per-layer localization of a model run (`--layerwise`): where its error starts."""

    propagated: tuple[float, ...] = ()
    teacher_forced: tuple[OpError, ...] = ()
    culprit: OpError | None = None  # the first op over its own budget when fed the reference's inputs
    explanation: str = ""
    unavailable: str = ""  # why it could not be done on this backend

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layerwise:
        culprit = data.get("culprit")
        return cls(
            tuple(data.get("propagated") or ()),
            tuple(OpError(**_known(OpError, e)) for e in data.get("teacher_forced") or ()),
            None if culprit is None else OpError(**_known(OpError, culprit)),
            data.get("explanation", ""),
            data.get("unavailable", ""),
        )


@dataclass(frozen=True)
class ParityRecord:
    """The `parity` section. `details` holds the workload's own sections (routing agreement, LLM statistics,
    decode, layerwise...) as it wrote them: the schema knows their names, not their workload."""

    verdict: VerdictRecord
    metrics: Metrics | None = None  # None: the output was malformed, only the verdict says why
    budget: Budget | None = None
    reduction_length: int | None = None
    deterministic: bool | None = None
    baseline: Baseline | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParityRecord:
        own = {"verdict", "metrics", "budget", "reduction_length", "deterministic", "baseline"}
        metrics, budget, base = data.get("metrics"), data.get("budget"), data.get("baseline")
        return cls(
            VerdictRecord.from_dict(data["verdict"]),
            None if metrics is None else _metrics(metrics),
            None if budget is None else Budget(**_known(Budget, budget)),
            data.get("reduction_length"),
            data.get("deterministic"),
            None if base is None else Baseline(**_known(Baseline, base) | {"metrics": _metrics(base["metrics"])}),
            {k: v for k, v in data.items() if k not in own},
        )

    def to_dict(self) -> dict[str, Any]:
        if self.metrics is None:
            return {"verdict": self.verdict.to_dict(), **self.details}
        base = self.baseline
        return {
            "metrics": self.metrics.to_record(),
            "budget": None if self.budget is None else asdict(self.budget),
            "reduction_length": self.reduction_length,
            "verdict": self.verdict.to_dict(),
            "deterministic": self.deterministic,
            "baseline": None
            if base is None
            else {"backend": base.backend, "source": base.source, "metrics": base.metrics.to_record()}
            | ({} if base.ratio_judged else {"ratio_judged": False}),
            **self.details,
        }

    def section(self, name: str) -> Mapping[str, Any] | None:
        """A workload section (`routing`, `llm`, `greedy`, `decode`...) or None when the workload wrote none."""
        value = self.details.get(name)
        return value if isinstance(value, Mapping) else None

    @property
    def invariance(self) -> Mapping[str, Any] | None:
        """The --invariance section (harness.invariance), or None when the run did not ask for it."""
        return self.section("invariance")

    @property
    def layerwise(self) -> Layerwise | None:
        data = self.section("layerwise")
        return None if data is None else Layerwise.from_dict(data)


@dataclass(frozen=True)
class TimingRecord:
    """A `timing` section (or one of `timing_variants`): the measurement as harness/timing.py wrote it, read
    through typed properties; `data` keeps every field, so a reader of a newer timing layout loses nothing."""

    data: Mapping[str, Any]

    def _get(self, name: str) -> Any:
        return self.data.get(name)

    median_ns = property(lambda self: self._get("median_ns"))
    samples_ns = property(lambda self: list(self._get("samples_ns") or []))
    ci95_low_ns = property(lambda self: self._get("ci95_low_ns"))
    ci95_high_ns = property(lambda self: self._get("ci95_high_ns"))
    noisy = property(lambda self: bool(self._get("noisy")))
    noise = property(lambda self: self._get("noise") or "")
    tflops = property(lambda self: self._get("tflops"))
    gbps = property(lambda self: self._get("gbps"))
    flops = property(lambda self: self._get("flops"))
    bytes = property(lambda self: self._get("bytes"))
    tokens_per_s = property(lambda self: self._get("tokens_per_s"))
    method = property(lambda self: str(self._get("method") or ""))  # how it was timed (the timer's name)
    cpu_ns = property(lambda self: self._get("cpu_ns"))  # host CPU time: only host-CPU backends record it
    problems = property(lambda self: [str(p) for p in self._get("problems") or ()])  # every failed check
    roofline = property(lambda self: dict(self._get("roofline") or {}))  # the calibrated ceilings, bound, pct

    @property
    def roofline_pct(self) -> float | None:
        return (self._get("roofline") or {}).get("pct")

    @property
    def valid(self) -> bool:
        """False when a check of the timed path failed (issue 23); True when absent (files older than the checks)."""
        return self._get("valid") is not False

    @property
    def invalid_reason(self) -> str:
        """The check that made the timing invalid, in one sentence; "" when valid."""
        return "" if self.valid else str(self._get("invalid_reason") or "no reason recorded")


@dataclass(frozen=True)
class Record:
    """One case's result: the schema of a results line. Build it in the runner, write it with `to_dict`, read
    it back with `from_dict` (which accepts every schema version up to SCHEMA_VERSION)."""

    run_id: str
    time_utc: str
    case: CaseRef
    status: str
    reason: str = ""
    shape_info: str | None = None
    shape_dims: Mapping[str, Any] | None = None
    simulated: bool = False
    threads: int | None = None
    backend_options: Mapping[str, str] = field(default_factory=dict)  # what the backend was created with
    parity: ParityRecord | None = None
    timing: TimingRecord | None = None
    timing_variants: Mapping[str, TimingRecord] | None = None  # further timed calls (LLM decode)
    memory: Mapping[str, Any] | None = None
    compile: Mapping[str, Any] | None = None
    implementation: Mapping[str, Any] | None = None
    environment: Mapping[str, Any] | None = None
    duration_s: float | None = None
    traceback: str | None = None  # an `error` record's last frames
    child_output: str | None = None  # --isolate: a dead child's last output
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields this harness does not know, kept as read

    @property
    def verdict(self) -> VerdictRecord | None:
        return None if self.parity is None else self.parity.verdict

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "record") -> Record:
        validate_record(data, where)
        known = {f.name for f in fields(cls)} - {"extra"}
        try:
            parity = data.get("parity")
            timing = data.get("timing")
            variants = data.get("timing_variants")
            return cls(
                **{k: v for k, v in data.items() if k in known and k not in _SECTIONS},
                case=CaseRef.from_dict(data["case"]),
                backend_options=dict(data.get("backend_options") or {}),
                parity=None if parity is None else ParityRecord.from_dict(parity),
                timing=None if timing is None else TimingRecord(timing),
                timing_variants=None if variants is None else {n: TimingRecord(v) for n, v in variants.items()},
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ResultsError(f"{where}: malformed record ({type(exc).__name__}: {exc})") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of a results line (optional sections left out when empty, as version 1 wrote them)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "time_utc": self.time_utc,
            "case": asdict(self.case),
            "status": self.status,
            "reason": self.reason,
            "shape_info": self.shape_info,
            "shape_dims": None if self.shape_dims is None else dict(self.shape_dims),
            "simulated": self.simulated,
            "threads": self.threads,
            "backend_options": dict(self.backend_options),
            "parity": None if self.parity is None else self.parity.to_dict(),
            "timing": None if self.timing is None else dict(self.timing.data),
            "memory": None if self.memory is None else dict(self.memory),
            "compile": None if self.compile is None else dict(self.compile),
            "implementation": None if self.implementation is None else dict(self.implementation),
        }
        if self.timing_variants is not None:
            out["timing_variants"] = {n: dict(t.data) for n, t in self.timing_variants.items()}
        for name in ("environment", "duration_s", "traceback", "child_output"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return {**out, **self.extra}


_SECTIONS = ("case", "backend_options", "parity", "timing", "timing_variants")


def validate_record(record: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise ResultsError(f"{where}: a record must be a JSON object, got {type(record).__name__}; {RESULTS_ACCEPTED}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ResultsError(f"{where}: record lacks required fields {missing}; {RESULTS_ACCEPTED}")
    version = record["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: schema_version {version!r} is newer than this harness reads ({SCHEMA_VERSION}); upgrade harness"
        )
    if record["status"] not in STATUSES:
        raise ResultsError(f"{where}: status {record['status']!r} is not one of: {', '.join(STATUSES)}")
    check_types(record, where, ResultsError)
    return record
