"""Suites: named selections of workloads, presets, dtypes, backends, seeds and input distributions.

Built-in suites are `smoke` (every workload, tiny shapes, seconds) and `ci` (tiny shapes, more seeds); a user's
suite is a TOML file whose errors name the offending key and its line.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.backend_options import OptionSetting
from harness.names import DISTRIBUTIONS, DTYPE_NAMES, QUANT_FORMATS, BadInputError, did_you_mean, unknown_name
from harness.timing import TimingConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SuiteError(BadInputError):
    """An unknown suite or a malformed suite file."""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str = ""
    workloads: tuple[str, ...] = ("*",)
    presets: tuple[str, ...] = ("tiny",)
    shapes: tuple[str, ...] = ()  # shape names within the presets; empty = all
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    backends: tuple[str, ...] = ("all",)
    seeds: tuple[int, ...] = (0,)
    inputs: tuple[str, ...] = DISTRIBUTIONS
    timing: TimingConfig = field(default_factory=TimingConfig)
    threads: int = 1  # intra-op threads (torch, ORT); 0 = every core this process may use
    exclude: tuple[
        str, ...
    ] = ()  # case-key globs left out of the plan (workload/preset/shape/dtype/inputs/seedN@backend)
    # "[BACKEND:]KEY=VALUE" backend options, applied where a selected backend declares KEY (before --backend-option)
    backend_options: tuple[str, ...] = ()


# attention.mla_decode's real shapes (named apart from the other workloads' model names, so only MLA runs them)
PAPER_MLA_SHAPES = (
    "mla-b8-s32k",
    "mla-b32-s8k",
    "mla-b64-s4k",
    "mla-b64-s32k",
    "mla-mtp-b32-s8k",
    "mla-paged-bs64-b32-s8k",
    "mla-paged-bs128-b64-s32k",
)

FLOAT_DTYPES = ("float32", "bfloat16", "float16")
# The quantized formats in smoke / ci: the workloads that declare them (linear.projection, moe.experts, moe.layer);
# ci runs the MoE only at the shapes with a shared expert (qwen2-moe gated, deepseek-v3 grouped) and one seed
QUANT_EXCLUDE = tuple(f"moe.*/tiny/{shape}/{fmt}/*" for shape in ("mixtral", "qwen3-moe") for fmt in QUANT_FORMATS)
QUANT_ONE_SEED = tuple(f"*/{fmt}/*/seed[12]@*" for fmt in QUANT_FORMATS)  # ci: the quantized cases at seed 0
PAPER_QUANT_SHAPES = ("deepseek-v3", "deepseek-v3-expert-gate", "qwen3-30b-a3b-q")  # MoE layer and projections

BUILTIN_SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "smoke",
            "every workload at tiny shapes in float32/bfloat16/float16, normal and stress inputs: seconds; exported "
            "LLM graphs (ort-*) only for llm.llama3, the cheapest export (the ci suite exports them all); the "
            "quantized formats (w8a8, fp8, fp8-block) for linear.projection and the MoE",
            dtypes=(*FLOAT_DTYPES, *QUANT_FORMATS),
            timing=TimingConfig(budget_s=0.02, warmup_s=0.005, min_samples=3),
            exclude=tuple(f"llm.{arch}/*@ort-*" for arch in ("qwen3", "qwen3-moe", "mixtral", "deepseek-v3")),
        ),
        Suite(
            "ci",
            "every workload at tiny shapes, three seeds, normal and stress inputs: parity for CI jobs; the "
            "quantized formats at seed 0, the MoE at its shared-expert shapes",
            dtypes=(*FLOAT_DTYPES, *QUANT_FORMATS),
            seeds=(0, 1, 2),
            timing=TimingConfig(budget_s=0.05, warmup_s=0.01, min_samples=5),
            exclude=(*QUANT_EXCLUDE, *QUANT_ONE_SEED),
        ),
        Suite(
            "paper",
            "real model shapes on a GPU (Llama-3-8B attention and paged decode, DeepSeek-V3 absorbed MLA decode at"
            " four batch / context points, MTP and paged, Qwen3-30B-A3B, Mixtral and DeepSeek-V3 MoE layers) in"
            " bfloat16; the MoE layers and DeepSeek-V3 / Qwen3 projections also in w8a8 and fp8",
            workloads=("attention.*", "moe.layer", "moe.experts", "linear.projection"),
            presets=("real",),
            shapes=("llama3-8b", "qwen3-moe", "mixtral", *PAPER_MLA_SHAPES, *PAPER_QUANT_SHAPES),
            dtypes=("bfloat16", "w8a8", "fp8"),
            inputs=("normal",),
            backends=("devices",),  # real shapes: on the accelerators here; -b to choose (CPU backends: hours)
            timing=TimingConfig(budget_s=1.0, warmup_s=0.2, min_samples=10),
        ),
        Suite(
            "bench-cpu",
            "every workload at small shapes in float32/bfloat16 (no float16: no fast fp16 on most CPUs)",
            presets=("small",),
            dtypes=("float32", "bfloat16"),
            inputs=("normal",),
            timing=TimingConfig(budget_s=1.0, warmup_s=0.1, min_samples=10),
        ),
    )
}

_LIST_FIELDS = {
    "workloads": str,
    "presets": str,
    "shapes": str,
    "dtypes": str,
    "backends": str,
    "seeds": int,
    "inputs": str,
    "exclude": str,
    "backend_options": str,
}
_TIMING_FIELDS = {f.name: f.type for f in fields(TimingConfig)}
# [timing] switches that are device backends' options now (cuda): kept in suite files as backend options
_TIMING_OPTIONS = {"graphs": "bool", "cold_cache": "bool"}


def _line_of(text: str, key: str, table: str | None = None) -> int | None:
    """The line where `key = ...` is set (inside [table] when given): TOML parsers do not report key positions."""
    in_table = table is None
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            in_table = table is None or header.group(1).strip() == table
            continue
        if in_table and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return None


def _where(path: Path, text: str, key: str, table: str | None = None) -> str:
    line = _line_of(text, key, table)
    dotted = f"{table}.{key}" if table else key
    return f"{path}:{line}: key {dotted!r}" if line else f"{path}: key {dotted!r}"


def load_suite_file(path: Path) -> Suite:
    """Parse a suite TOML file. Top-level keys: name, description, the list fields; a [timing] table."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"cannot read suite file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SuiteError(
            f"suite file {path}:{line} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "a suite file is TOML, which is UTF-8: save it as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: malformed TOML: {exc}") from None
    known = {"name", "description", "timing", "threads", *_LIST_FIELDS}
    values: dict[str, Any] = {"name": path.stem}
    timing_options: list[str] = []
    for key, value in data.items():
        if key not in known:
            raise SuiteError(f"{_where(path, text, key)} is not a suite setting; accepted: {', '.join(sorted(known))}")
        if key in ("name", "description"):
            if not isinstance(value, str):
                raise SuiteError(f"{_where(path, text, key)} must be a string, got {type(value).__name__}")
            values[key] = value
        elif key == "timing":
            values["timing"] = _timing(path, text, value, timing_options)
        elif key == "threads":
            try:
                values["threads"] = parse_threads(value)
            except SuiteError as exc:
                raise SuiteError(f"{_where(path, text, key)}: {exc}") from None
        else:
            kind = _LIST_FIELDS[key]
            items = [value] if isinstance(value, kind) and not isinstance(value, bool) else value
            if (
                not isinstance(items, list)
                or not items
                or not all(isinstance(i, kind) and not isinstance(i, bool) for i in items)
            ):
                raise SuiteError(
                    f"{_where(path, text, key)} must be a non-empty list of {kind.__name__}s, got {value!r}"
                )
            values[key] = tuple(items)
    values["backend_options"] = (*timing_options, *values.get("backend_options", ()))
    suite = Suite(**values)
    check_values(suite, lambda key: _where(path, text, key))
    return suite


def _timing(path: Path, text: str, table: Any, options: list[str]) -> TimingConfig:
    """The [timing] table; its device switches (graphs, cold_cache) are appended to `options` as KEY=VALUE."""
    if not isinstance(table, dict):
        raise SuiteError(f"{_where(path, text, 'timing')} must be a table ([timing])")
    config = TimingConfig()
    accepted = {**_TIMING_FIELDS, **_TIMING_OPTIONS}
    for key, value in table.items():
        if key not in accepted:
            raise SuiteError(
                f"{_where(path, text, key, 'timing')} is not a timing setting; accepted: {', '.join(accepted)}"
            )
        if accepted[key] == "bool":  # annotations are strings (postponed evaluation)
            if not isinstance(value, bool):
                raise SuiteError(f"{_where(path, text, key, 'timing')} must be true or false, got {value!r}")
            if key in _TIMING_OPTIONS:
                options.append(f"{key}={int(value)}")
            else:
                config = replace(config, **{key: value})
            continue
        expected = int if key.endswith("samples") else (int, float)
        if isinstance(value, bool) or not isinstance(value, expected) or not 0 < value < math.inf:
            raise SuiteError(f"{_where(path, text, key, 'timing')} must be a positive number, got {value!r}")
        config = replace(config, **{key: value})
    return config


def check_values(suite: Suite, where: Any) -> None:
    """The values of a suite's lists, wherever they came from (a file's keys, `harness run`'s flags): `where(key)`
    names the place for the message."""
    for key, kind, allowed in (("dtypes", "dtype", DTYPE_NAMES), ("inputs", "input distribution", DISTRIBUTIONS)):
        for item in getattr(suite, key):
            if item not in allowed:
                raise SuiteError(f"{where(key)}: {unknown_name(kind, item, allowed)}")
    for seed in suite.seeds:
        if seed < 0:
            raise SuiteError(f"{where('seeds')}: seeds must be >= 0, got {seed}")
    for item in suite.backend_options:
        OptionSetting.parse(item, source=where("backend_options"))  # the syntax; values are checked per backend


def parse_threads(value: Any) -> int:
    """A thread count: a whole number >= 1, or "auto" (0: every core this process may use)."""
    if value == "auto":
        return 0
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SuiteError(f"threads must be a whole number >= 1 or 'auto', got {value!r}")
    return value


def resolve_threads(threads: int) -> int:
    """The number of threads a run uses: `threads`, or for 0 the cores this process may run on."""
    if threads:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_suite(spec: str) -> Suite:
    """A built-in suite by name, or a TOML file by path."""
    if spec in BUILTIN_SUITES:
        return BUILTIN_SUITES[spec]
    if spec.endswith(".toml") or Path(spec).is_file():
        return load_suite_file(Path(spec))
    raise SuiteError(
        f"unknown suite {spec!r}: not one of: {', '.join(BUILTIN_SUITES)} (or a path to a .toml file)"
        + did_you_mean(spec, BUILTIN_SUITES)
    )
