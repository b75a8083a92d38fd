"""What a record's backend declared (`environment.backend`: `device`, `eager_reference`, from the backend class,
harness/backend_traits.py), and, for records written before those fields existed, what can be told from the
backend names and timing methods of that time.

The tables below describe files written before the fields existed (schema 1 and 2 files such as
results/cuda/ci.jsonl and paper.jsonl): they are the one place where the core knows backend names, and they must
not grow. A record that declares a field is always taken at its word.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.results import Record

# Before `eager_reference` was recorded: eager torch on each device class was the backend of this name.
LEGACY_EAGER_REFERENCES = {"cpu": "torch-cpu", "cuda": "cuda"}
# Before `device` was recorded: words in the backend's name or timing method that named its device class.
LEGACY_DEVICE_WORDS = (("npu", ("npu", "ascend", "cann")), ("cuda", ("cuda",)))


def declared(record: Record) -> Mapping[str, Any]:
    """The record's `environment.backend` section ({} when absent)."""
    env = (record.environment or {}).get("backend")
    return env if isinstance(env, Mapping) else {}


def backend_device(record: Record) -> str:
    """The device class of the record's backend (cpu, cuda, npu...): as declared; for records that do not say,
    cpu where the timer measured host CPU time (only host-CPU backends do), else the backend's name or timing
    method; "unknown" when nothing tells."""
    device = declared(record).get("device")
    if isinstance(device, str) and device:
        return device
    timing = record.timing
    if timing is not None and timing.cpu_ns is not None:
        return "cpu"
    text = f"{record.case.backend} {'' if timing is None else timing.method}".lower()
    for name, words in LEGACY_DEVICE_WORDS:
        if any(w in text for w in words):
            return name
    return "cpu" if "cpu" in text else "unknown"


def is_eager_reference(record: Record) -> bool:
    """Whether the record's backend is eager torch on its device: as declared; for records that do not say, by
    the backend names of that time."""
    flag = declared(record).get("eager_reference")
    if isinstance(flag, bool):
        return flag
    return LEGACY_EAGER_REFERENCES.get(backend_device(record)) == record.case.backend
