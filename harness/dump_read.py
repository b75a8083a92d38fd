"""Reading an msprobe (mindstudio-probe) tensor dump: dump.json, stack.json and dump_tensor_data/*.pt.

A dump directory holds one folder per step and rank (step0/proc<PID>/ or step0/rank<N>/), each with dump.json
(every hooked call in execution order: its inputs, keyword arguments, outputs and, at module level, parameters,
a tensor as metadata plus `data_name`, the file of its values) and stack.json (each call's Python stack). API
level (L1) names calls `<Prefix>.<api>.<n>.forward` (Functional.scaled_dot_product_attention.0.forward,
NPU.npu_fusion_attention.0.forward), module level (L0) `Module.<path>.<Class>.forward.<n>`. Tensors load
lazily; every file dump.json names is checked to exist up front, so a partial dump is refused before judging.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.lazy import torch
from harness.names import BadInputError

DUMP_ACCEPTED = "an msprobe dump directory: PrecisionDebugger task 'tensor' writes step*/proc*/dump.json"
_LIB_FRAMES = ("site-packages/torch/", "site-packages/msprobe/")  # frames that are not the caller's code


class DumpError(BadInputError):
    """A dump directory that cannot be read: no dump.json, a corrupt JSON file, a tensor file missing or
    unreadable. The CLI answers with exit 2 and the file's name."""


@dataclass(frozen=True)
class TensorRef:
    """A dumped tensor: its metadata from dump.json and the file holding its values."""

    path: Path
    dtype: str  # "torch.bfloat16"
    shape: tuple[int, ...]

    def load(self) -> torch.Tensor:
        try:
            value = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated zip, garbage bytes, a pickle of something else
            raise DumpError(f"{self.path}: unreadable tensor file ({type(exc).__name__}: {exc})") from None
        if not isinstance(value, torch.Tensor):
            raise DumpError(f"{self.path}: holds a {type(value).__name__}, not a tensor")
        return value

    @property
    def dtype_name(self) -> str:
        return self.dtype.removeprefix("torch.")


@dataclass(frozen=True)
class DumpCall:
    """One hooked call (an API call at L1, a module's forward at L0) with its arguments as dumped."""

    name: str  # the dump.json key
    index: int  # position in execution order within its dump
    kind: str  # "api" or "module"
    api: str  # the lookup key: "Functional.silu", "NPU.npu_swiglu", "Module.Linear"
    direction: str  # "forward" or "backward"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[Any, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    stack: tuple[str, ...] = ()

    @property
    def call_site(self) -> str:
        """The first stack frame outside torch, msprobe and the harness: the user's line that made the call."""
        frames = [f for f in self.stack if not any(lib in f for lib in _LIB_FRAMES)]
        picked = frames[0] if frames else (self.stack[0] if self.stack else "")
        return " ".join(picked.replace(", \n", ": ").split())


@dataclass(frozen=True)
class Dump:
    """One step/rank folder of a dump: its calls in execution order."""

    root: Path  # the folder holding dump.json
    label: str  # its path relative to the directory given (step0/proc123), or its name
    level: str
    calls: tuple[DumpCall, ...]


def _value(item: Any, data_dir: Path) -> Any:
    """dump.json's description of an argument turned into a TensorRef, a Python value, or a list of them."""
    if isinstance(item, list):
        return [_value(x, data_dir) for x in item]
    if not isinstance(item, dict):
        return item
    if "data_name" in item:
        return TensorRef(data_dir / str(item["data_name"]), str(item.get("dtype", "")), tuple(item.get("shape", ())))
    if item.get("type") == "torch.Tensor":  # an empty tensor msprobe wrote no file for
        return None
    if "value" in item:
        return item["value"]
    return {k: _value(v, data_dir) for k, v in item.items()}


def _split_name(name: str) -> tuple[str, str, str]:
    """(kind, api key, direction) of a dump.json key; L0 `Module.<path>.<Class>.forward.<n>`, L1
    `<Prefix>.<api>.<n>.forward`."""
    parts = name.split(".")
    if parts[0] == "Module" and len(parts) >= 4:
        return "module", f"Module.{parts[-3]}", parts[-2]
    if len(parts) >= 4 and parts[-2].isdigit():
        return "api", ".".join(parts[:-2]), parts[-1]
    return "api", name, "forward" if "forward" in parts else "unknown"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DumpError(f"{path}: missing; {DUMP_ACCEPTED}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DumpError(f"{path}: not readable JSON ({type(exc).__name__}: {exc}); {DUMP_ACCEPTED}") from None


def _stacks(root: Path) -> dict[str, tuple[str, ...]]:
    """Call name -> its stack frames; stack.json is optional (a missing one costs only the call sites)."""
    path = root / "stack.json"
    if not path.exists():
        return {}
    data = _read_json(path)
    stacks: dict[str, tuple[str, ...]] = {}
    for entry in data.values() if isinstance(data, dict) else ():
        if isinstance(entry, list) and len(entry) == 2:
            for name in entry[0]:
                stacks[str(name)] = tuple(str(f) for f in entry[1])
    return stacks


def _tensor_refs(value: Any) -> Iterator[TensorRef]:
    if isinstance(value, TensorRef):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensor_refs(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensor_refs(v)


def read_one(root: Path, label: str) -> Dump:
    """The calls of one folder holding dump.json; every tensor file it names must exist."""
    meta = _read_json(root / "dump.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("data"), dict):
        raise DumpError(f"{root / 'dump.json'}: no 'data' object of calls; {DUMP_ACCEPTED}")
    if meta.get("task", "tensor") != "tensor":
        raise DumpError(
            f"{root / 'dump.json'}: task {meta.get('task')!r} holds no tensor values; dump with task 'tensor'"
        )
    data_dir = root / "dump_tensor_data"
    stacks = _stacks(root)
    calls = []
    for index, (name, entry) in enumerate(meta["data"].items()):
        if not isinstance(entry, dict):
            raise DumpError(f"{root / 'dump.json'}: call {name!r} is not an object")
        kind, api, direction = _split_name(name)
        call = DumpCall(
            name=name,
            index=index,
            kind=kind,
            api=api,
            direction=direction,
            args=tuple(_value(a, data_dir) for a in entry.get("input_args") or ()),
            kwargs={k: _value(v, data_dir) for k, v in (entry.get("input_kwargs") or {}).items()},
            outputs=tuple(_value(o, data_dir) for o in entry.get("output") or ()),
            parameters={k: _value(v, data_dir) for k, v in (entry.get("parameters") or {}).items()},
            stack=stacks.get(name, ()),
        )
        for ref in _tensor_refs((call.args, call.kwargs, call.outputs, call.parameters)):
            if not ref.path.is_file():
                raise DumpError(f"{ref.path}: tensor file of {name} missing (a partial dump?); {DUMP_ACCEPTED}")
        calls.append(call)
    return Dump(root, label, str(meta.get("level", "")), tuple(calls))


def read_dump(directory: Path) -> list[Dump]:
    """Every step/rank folder under `directory` (or `directory` itself when it holds dump.json), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DumpError(f"{directory}: not a directory; {DUMP_ACCEPTED}")
    if (directory / "dump.json").exists():
        return [read_one(directory, directory.name)]
    # A folder with stack.json or tensor data but no dump.json is a partial dump: named, not skipped.
    marks = ("dump.json", "stack.json", "construct.json", "dump_tensor_data")
    roots = sorted({p.parent for m in marks for p in directory.rglob(m)})
    if not roots:
        raise DumpError(f"{directory}: no dump.json under it; {DUMP_ACCEPTED}")
    return [read_one(r, str(r.relative_to(directory))) for r in roots]
