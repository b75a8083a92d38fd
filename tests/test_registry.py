"""The backend and workload registries: entry points, plugins, duplicates, selection."""

from __future__ import annotations

from typing import ClassVar

import pytest

from harness.backend import Availability, Backend, BackendRegistry, RegistryError, default_registry
from harness.backends.torch_cpu import TorchCpu
from harness.plugins import PluginError
from harness.workload import WorkloadError, WorkloadRegistry
from tests.conftest import FAULTS, plugin


def test_builtins_register_through_entry_points() -> None:
    registry = default_registry()
    assert {"cpu-reference", "torch-cpu"} <= set(registry.names())
    assert "entry point harness.backends:torch-cpu" in registry.origin("torch-cpu")


def test_plugin_file_registers_its_backends() -> None:
    registry = default_registry([FAULTS])
    assert "blockwise-online" in registry.names()
    assert registry.probe("blockwise-online").available


def test_duplicate_name_is_refused_naming_both_origins() -> None:
    with pytest.raises(
        RegistryError, match=r"'torch-cpu' is registered twice: by entry point .* and by plugin .*duplicate_name"
    ):
        default_registry([plugin("duplicate_name")])


def test_abstract_or_nameless_classes_are_refused() -> None:
    class Half(Backend):
        name: ClassVar[str] = "half"

    class Nameless(TorchCpu):
        name: ClassVar[str] = ""

    registry = BackendRegistry()
    with pytest.raises(RegistryError, match=r"leaves abstract methods unimplemented: .*attention"):
        registry.register(Half, "test")
    with pytest.raises(RegistryError, match="has no `name`"):
        registry.register(Nameless, "test")


def test_unknown_names_and_bad_plugins() -> None:
    registry = default_registry()
    with pytest.raises(RegistryError, match=r"unknown backend 'npu': not one of: .*torch-cpu"):
        registry.select(["npu"])
    assert registry.select(["all"]) == registry.names()
    with pytest.raises(PluginError, match="does not exist"):
        registry.load_plugin("/no/such/file.py")
    with pytest.raises(PluginError, match=r"neither an existing \.py file nor an importable module"):
        registry.load_plugin("no_such_module_xyz")


def test_probe_that_raises_becomes_a_reason() -> None:
    class Exploding(TorchCpu):
        name: ClassVar[str] = "exploding"

        @classmethod
        def probe(cls) -> Availability:
            raise OSError("libvendor.so: cannot open shared object file")

    registry = BackendRegistry()
    registry.register(Exploding, "test")
    availability = registry.probe("exploding")
    assert not availability.available and "libvendor.so" in availability.reason


def test_implemented_ops_are_derived_from_overrides() -> None:
    class AttentionOnly(Backend):
        name: ClassVar[str] = "attention-only"

        @classmethod
        def probe(cls) -> Availability:
            return Availability(True)

        def to_device(self, t):
            return t

        def to_host(self, t):
            return t

        def synchronize(self) -> None:
            pass

        def environment(self) -> dict:
            return {}

        def attention(self, q, k, v, **kw):
            return q

    # mla and attention_tp have defaults built from attention, moe_ep one built from experts, llm_tp from rms_norm &c.
    assert AttentionOnly.implemented_ops() == {"attention", "mla", "attention_tp"}
    assert TorchCpu.implemented_ops() == {
        *("attention", "mla", "attention_tp", "rms_norm", "rope", "swiglu", "route", "moe", "moe_ep", "llm_tp"),
        "causal_lm",
        "linear",
    }


def test_workload_selection_by_glob() -> None:
    registry = WorkloadRegistry.discover()
    assert [w.name for w in registry.select(["attention.*"])] == [
        "attention.chunked_prefill",
        "attention.decode",
        "attention.mla_decode",
        "attention.paged_decode",
        "attention.paged_prefill",
        "attention.prefill",
        "attention.sliding_window",
    ]
    assert [w.name for w in registry.select(["moe.*"])] == ["moe.experts", "moe.layer", "moe.route"]
    with pytest.raises(WorkloadError, match=r"no workload matches 'vision\.\*'"):
        registry.select(["vision.*"])


def test_a_backend_with_the_old_routing_signature_is_refused_saying_what_changed(harness_cli) -> None:
    run = harness_cli("run", "--plugin", plugin("old_routing"), "-b", "torch-cpu", "-w", "moe.route")
    assert run.exit_code == 2 and "Traceback" not in run.output
    line = run.output.strip()
    assert "\n" not in line and "OldStyleRouter implements route with the old signature (takes " in line
    assert "one harness.ops.RoutingSpec" in line and "route(logits, spec: RoutingSpec, *, bias=None) -> Routing" in line

    class OldMoe(TorchCpu):  # moe with the flag that changed its return type
        name: ClassVar[str] = "old-moe"

        def moe(self, x, router_w, w_gate, w_up, w_down, *, routing_override=None, return_routing=False, **kw):
            raise AssertionError("never called")

    class Wrapper(TorchCpu):  # passes everything through: nothing to refuse
        name: ClassVar[str] = "wrapper"

        def moe(self, *args, **kwargs):
            return super().moe(*args, **kwargs)

    registry = BackendRegistry()
    with pytest.raises(RegistryError, match=r"implements moe with the old signature \(takes return_routing, routing_"):
        registry.register(OldMoe, "test")
    registry.register(Wrapper, "test")


def test_a_backend_written_from_the_readme_routing_example_passes(harness_cli) -> None:
    run = harness_cli(
        "run", "--plugin", plugin("new_routing"), "-b", "readme-router", "-w", "moe.*", "--preset", "tiny",
        "--dtype", "float32", "--parity-only",
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert len(run.records) == 24 and {r["status"] for r in run.records} == {"passed"}
    layer = [r for r in run.records if r["case"]["workload"] == "moe.layer"]
    assert layer and all(r["parity"]["routing"]["agreement"] == 1.0 for r in layer)
