"""What a Ray task asks for comes from its backend class (`ray_resources`, harness/backend_traits.py), never from a
device or vendor name the core knows: the shipped backends' declarations, a plugin's own custom resource, and the
skip reason naming whatever resource the cluster lacks. Units, without starting Ray (tests/test_ray.py runs them
on a local instance)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from harness.backend import BackendRegistry
from harness.backends.torch_cpu import TorchCpu
from harness.ray_executor import need_of, split_groups
from harness.workload import Case

CPU_ONLY = {"CPU": 2.0, "memory": 1e9, "node:127.0.0.1": 1.0}


class TpuX(TorchCpu):
    """A plugin for a device the core has never heard of, on nodes started with `--resources '{"TPU_X": 4}'`."""

    name: ClassVar[str] = "tpu-x"
    device: ClassVar[str] = "tpu"
    ray_resources: ClassVar[dict[str, Any]] = {"resources": {"TPU_X": 1}}


@pytest.mark.parametrize(
    ("backend", "asks"),
    [
        ("cuda", {"num_cpus": 1, "num_gpus": 1}),
        ("cuda-flash", {"num_cpus": 1, "num_gpus": 1}),
        ("ort-cuda", {"num_cpus": 1, "num_gpus": 1}),
        ("ascend", {"num_cpus": 1, "resources": {"NPU": 1}}),
        ("ort-cann", {"num_cpus": 1, "resources": {"NPU": 1}}),
        ("ascend-sim", {"num_cpus": 6}),  # the simulator is CPU work
        ("torch-cpu", {"num_cpus": 6}),
        ("cpu-reference", {"num_cpus": 6}),
    ],
)
def test_a_task_asks_for_what_its_backend_class_declares(registry: BackendRegistry, backend: str, asks: dict) -> None:
    cls = registry.get(backend)  # the class, as RayRunner.need takes it: never instantiated on the driver
    assert need_of(cls.ray_resources, 6).resources == asks


def test_a_plugins_custom_resource_is_asked_for_and_named_where_the_cluster_lacks_it() -> None:
    need = need_of(TpuX.ray_resources, 6)
    assert need.resources == {"num_cpus": 1, "resources": {"TPU_X": 1}}
    assert need.missing(CPU_ONLY) == (
        "no node of the Ray cluster has the TPU_X resource this backend needs "
        """(start its nodes with `ray start --resources '{"TPU_X": N}'`)"""
    )
    assert need.missing({**CPU_ONLY, "TPU_X": 4.0}) is None
    assert need.missing({**CPU_ONLY, "NPU": 8.0}) is not None  # another accelerator is not this one


def test_gpu_and_npu_messages_are_unchanged() -> None:
    gpu, npu = need_of({"num_gpus": 1}, 2), need_of({"resources": {"NPU": 1}}, 2)
    assert gpu.missing(CPU_ONLY) == "no node of the Ray cluster has the GPU resource this backend needs"
    assert npu.missing(CPU_ONLY) == (
        "no node of the Ray cluster has the NPU resource this backend needs "
        """(start its nodes with `ray start --resources '{"NPU": N}'`)"""
    )
    assert gpu.missing({**CPU_ONLY, "GPU": 1.0}) is None and npu.missing({**CPU_ONLY, "NPU": 8.0}) is None
    assert need_of({}, 2).missing(CPU_ONLY) is None


def test_every_resource_a_backend_lacks_is_named() -> None:
    need = need_of({"num_gpus": 1, "resources": {"TPU_X": 1}}, 2)
    why = need.missing(CPU_ONLY)
    assert why is not None and "the GPU and TPU_X resources" in why and '{"TPU_X": N}' in why
    assert '{"GPU": N}' not in why  # Ray finds GPUs itself: no --resources hint for them
    assert need.missing({**CPU_ONLY, "GPU": 1.0}) == (
        "no node of the Ray cluster has the TPU_X resource this backend needs "
        """(start its nodes with `ray start --resources '{"TPU_X": N}'`)"""
    )


def test_a_case_group_splits_by_declared_resources() -> None:
    declared = {"torch-cpu": {}, "tpu-x": TpuX.ray_resources, "gpu-a": {"num_gpus": 1}, "gpu-b": {"num_gpus": 1}}
    declared["gpu-big"] = {"num_gpus": 1, "memory": 2**34}  # same device, other needs: a task of its own
    cases = [Case("attention.prefill", "tiny", "gqa", "float32", "normal", 0, b, "attention") for b in declared]
    tasks = split_groups(cases, lambda c: need_of(declared[c.backend], 2), 0)
    assert [[c.backend for c in t.cases] for t in tasks] == [["torch-cpu"], ["tpu-x"], ["gpu-a", "gpu-b"], ["gpu-big"]]
    assert tasks[3].need.resources == {"num_cpus": 1, "num_gpus": 1, "memory": 2**34}
