"""What a backend class declares for readers of its records (harness/backend_traits.py) reaches every record:
`environment.backend` carries `device` and `eager_reference`, so the 10x review notice finds eager torch of a
device class by what the records say, not by backend name (harness/timing_view.py)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from harness.backend import BackendRegistry
from harness.launch import launch
from harness.results import read_records
from harness.run_flags import RunFlags
from harness.timing_view import eager_references


def test_every_record_carries_its_backends_declared_device_and_eager_reference(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    flags = {"workloads": ("attention.prefill",), "presets": ("tiny",), "shapes": ("gqa",), "dtypes": ("float32",)}
    request = RunFlags(out=out, backends=("cpu-reference,torch-cpu,ascend-sim",), parity_only=True, **flags).request()
    assert launch(request, Console(stderr=True, quiet=True)).exit_code == 0
    records = read_records(out)
    declared = {
        r.case.backend: {k: (r.environment or {})["backend"][k] for k in ("device", "eager_reference")} for r in records
    }
    assert declared == {
        "cpu-reference": {"device": "cpu", "eager_reference": False},
        "torch-cpu": {"device": "cpu", "eager_reference": True},
        "ascend-sim": {"device": "cpu", "eager_reference": False},
    }
    assert eager_references(records) == ["torch-cpu"]


def test_the_shipped_eager_references_are_one_per_device_class(registry: BackendRegistry) -> None:
    eager = {name: registry.get(name).device for name in registry.names() if registry.get(name).is_eager_reference()}
    assert eager == {"torch-cpu": "cpu", "cuda": "cuda"}  # the cuda-* variants pin one kernel: not eager torch


def test_a_subclass_of_eager_torch_is_held_against_it_not_a_reference_of_itself(tmp_path: Path) -> None:
    """A plugin subclassing TorchCpu (a faster kernel, or a cheat) inherits the class attribute, but not the
    declaration: were it an eager reference, a name sorting before torch-cpu would be its own reference and a
    20x "speedup" would go unflagged."""
    from harness.backends.torch_cpu import TorchCpu
    from tests.conftest import FAULTS

    class Faster(TorchCpu):
        name = "a-faster-cpu"

    assert TorchCpu.is_eager_reference() and not Faster.is_eager_reference()
    assert Faster.declared()["eager_reference"] is False
    out = tmp_path / "r.jsonl"
    flags = {"workloads": ("attention.decode",), "presets": ("tiny",), "shapes": ("gqa",), "dtypes": ("float32",)}
    request = RunFlags(
        out=out, backends=("torch-cpu,blockwise-online",), plugins=(FAULTS,), parity_only=True, **flags
    ).request()
    assert launch(request, Console(stderr=True, quiet=True)).exit_code == 0
    assert eager_references(read_records(out)) == ["torch-cpu"]  # "blockwise-online" sorts first: not a reference
