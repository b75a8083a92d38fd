"""The types of a results line's fields, checked once as a line is read.

A hand-edited or damaged line whose field has the wrong type (a string where a number belongs, a list where
an object does) is refused naming the line and the field, instead of breaking `harness report` or `compare`
later with a TypeError. Sections the harness does not know are left alone; so are unknown fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from harness.names import BadInputError
from harness.parity import Budget, Failure, Metrics
from harness.parity_llm import OpError

Number = (int, float)


@dataclass(frozen=True)
class Obj:
    """A JSON object whose listed fields (when present) have these specs; `required` ones must be present."""

    fields: Mapping[str, Any]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class MapOf:
    value: Any


@dataclass(frozen=True)
class Maybe:
    """The spec, or null."""

    spec: Any


_ANNOTATIONS = {"float": Number, "int": int, "bool": bool, "str": str, "list[int]": ListOf(int)}


def _of(cls: type, *, required: bool = True) -> Obj:
    """The spec of a dataclass written with asdict: each field by its annotation, fields without a default
    required (a reader builds the class from them)."""
    specs = {f.name: _ANNOTATIONS.get(str(f.type), object) for f in fields(cls)}
    needed = tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
    return Obj(specs, needed if required else ())


TIMING = Obj(
    {
        "median_ns": Number,  # what every reader of a timing uses; the rest may be missing
        "samples_ns": Maybe(ListOf(Number)),
        **{name: Maybe(Number) for name in ("ci95_low_ns", "ci95_high_ns", "tflops", "gbps", "flops", "bytes")},
        "tokens_per_s": Maybe(Number),
        "noisy": Maybe(bool),
        "noise": Maybe(str),
        "roofline": Maybe(Obj({"pct": Maybe(Number)})),
        "valid": Maybe(bool),  # issue 23: the timed path's checks
        "invalid_reason": Maybe(str),
    },
    ("median_ns",),
)
FAILURE = _of(Failure)
PARITY = Obj(
    {
        "verdict": Obj(
            {"passed": bool, "mode": str, "reason": str, "failures": Maybe(ListOf(FAILURE)), "worst": Maybe(FAILURE)},
            ("passed",),
        ),
        "metrics": Maybe(_of(Metrics, required=False)),
        "budget": Maybe(_of(Budget, required=False)),
        "reduction_length": Maybe(int),
        "deterministic": Maybe(bool),
        "baseline": Maybe(
            Obj({"backend": str, "source": str, "metrics": MapOf(object), "ratio_judged": bool}, ("backend", "source"))
        ),
        # workload sections the report reads
        "routing": Maybe(
            Obj({"agreement": Number, "near_ties": int, "unexplained": int}, ("agreement", "near_ties", "unexplained"))
        ),
        "llm": Maybe(Obj({"top1_agreement": Number, "kl_mean": Number}, ("top1_agreement", "kl_mean"))),
        "greedy": Maybe(Obj({"min": int}, ("min",))),
        "layerwise": Maybe(
            Obj(
                {
                    "propagated": Maybe(ListOf(Number)),
                    "teacher_forced": Maybe(ListOf(_of(OpError))),
                    "culprit": Maybe(_of(OpError)),
                    "explanation": str,
                    "unavailable": str,
                }
            )
        ),
    },
    ("verdict",),
)
CASE = Obj(
    {
        **{name: str for name in ("key", "workload", "op", "preset", "shape", "dtype", "inputs", "backend")},
        "seed": int,
    },
    ("key",),
)
RECORD = Obj(
    {
        "schema_version": int,
        "run_id": str,
        "time_utc": str,
        "case": CASE,
        "status": str,
        "reason": str,
        "shape_info": Maybe(str),
        "shape_dims": Maybe(MapOf(object)),
        "simulated": bool,
        "threads": Maybe(int),
        "backend_options": Maybe(MapOf(str)),
        "parity": Maybe(PARITY),
        "timing": Maybe(TIMING),
        "timing_variants": Maybe(MapOf(TIMING)),
        "memory": Maybe(MapOf(object)),
        "compile": Maybe(MapOf(Number)),
        "implementation": Maybe(MapOf(object)),
        "environment": Maybe(MapOf(object)),
        "duration_s": Maybe(Number),
        "traceback": Maybe(str),
        "child_output": Maybe(str),
    }
)


def _describe(spec: Any) -> str:
    if isinstance(spec, Maybe):
        return f"{_describe(spec.spec)} or null"
    if isinstance(spec, Obj | MapOf):
        return "an object"
    if isinstance(spec, ListOf):
        return f"a list of {_describe(spec.item)}s"
    if spec is Number:
        return "a number"
    return {bool: "true or false", int: "a whole number", str: "a string"}.get(spec, "any value")


def _problem(value: Any, spec: Any, at: str) -> str | None:
    """Where `value` breaks `spec` (the dotted field and what it must be), or None."""
    if isinstance(spec, Maybe):
        return None if value is None else _problem(value, spec.spec, at)
    if isinstance(spec, Obj | MapOf):
        if not isinstance(value, dict):
            return f"{at} must be an object, got {json_type(value)}"
        missing = [name for name in getattr(spec, "required", ()) if name not in value]
        if missing:
            return f"{at} lacks {', '.join(missing)}"
        items = value.items() if isinstance(spec, MapOf) else ((k, value[k]) for k in spec.fields if k in value)
        for key, item in items:
            inner = spec.value if isinstance(spec, MapOf) else spec.fields[key]
            problem = _problem(item, inner, f"{at}.{key}" if at else key)
            if problem:
                return problem
        return None
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return f"{at} must be {_describe(spec)}, got {json_type(value)}"
        return next((p for i, v in enumerate(value) if (p := _problem(v, spec.item, f"{at}[{i}]"))), None)
    if spec is object:
        return None
    wrong_bool = isinstance(value, bool) and spec is not bool
    if wrong_bool or not isinstance(value, spec):
        return f"{at} must be {_describe(spec)}, got {json_type(value)}"
    return None


def json_type(value: Any) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_types(record: Mapping[str, Any], where: str, error: type[BadInputError]) -> None:
    """Raise `error` naming `where` and the first field whose value has the wrong type."""
    problem = _problem(dict(record), RECORD, "")
    if problem:
        raise error(f"{where}: field {problem}; the record is damaged or was edited by hand")
