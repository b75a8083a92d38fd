"""The Ascend backend: the kernel contract on Huawei Ascend NPUs through torch_npu's native kernels.

`ascend` imports the real torch_npu (guardedly: its failure text is the unavailability reason) and runs on
device "npu". `ascend-sim` is the same adapter over backends/ascend/sim.py, a CPU simulator of the same API,
so CI proves the adapter's logic: layouts, sparse modes, Ascend's inverted mask convention, explicit scales,
the MoE kernel chain. Never float64 on the device: the reference stays on the host. The ops live in mixins:
attention.py, mla.py, moe.py, quant.py; this module is the device plumbing and the two backends.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar

from harness.backend import Availability
from harness.backends.ascend.attention import AscendAttentionOps
from harness.backends.ascend.fused_ep import SIM
from harness.backends.ascend.mla import AscendMlaOps
from harness.backends.ascend.moe import AscendMoeOps
from harness.backends.ascend.quant import AscendQuantOps
from harness.lazy import torch
from harness.timing import Timer, TimingConfig
from harness.torch_backend import TorchBackend


def _import_torch_npu() -> tuple[ModuleType, Any]:
    """torch_npu and torch.npu; any exception (ImportError for libhccl.so, RuntimeError...) propagates. Where
    torch_npu is not installed at all, that is said without importing torch (harness list stays fast)."""
    import importlib.util

    if importlib.util.find_spec("torch_npu") is None:
        raise ModuleNotFoundError("No module named 'torch_npu'")
    import torch_npu

    return torch_npu, torch.npu  # type: ignore[attr-defined]


class NpuEventTimer:
    """torch.npu.Event pairs around `calls` calls; elapsed_time is in milliseconds."""

    method = "npu-events"

    def __init__(self, npu: Any) -> None:
        self.npu = npu

    def elapsed_ns(self, fn: Any, calls: int) -> float:
        start, end = self.npu.Event(enable_timing=True), self.npu.Event(enable_timing=True)
        self.npu.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e6


class Ascend(AscendAttentionOps, AscendMlaOps, AscendMoeOps, AscendQuantOps, TorchBackend):
    """The adapter: contract calls turned into torch_npu calls (layouts, sparse modes, Ascend's mask convention)."""

    name: ClassVar[str] = "ascend"
    device: ClassVar[str] = "npu"
    ray_resources: ClassVar[dict[str, Any]] = {"resources": {"NPU": 1}}  # `ray start --resources '{"NPU": 8}'`
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "bfloat16", "float16", "w8a8"})  # fp8: quant.py
    description: ClassVar[str] = "Huawei Ascend NPU through torch_npu's fused kernels (FIA, grouped matmul MoE)"
    collective_backend: ClassVar[str] = "hccl"

    @classmethod
    def place(cls, local_rank: int) -> None:
        """npu:LOCAL_RANK for the whole process (torch_npu.npu.set_device), so "npu" means it."""
        cls.load()[1].set_device(local_rank)

    @classmethod
    def load(cls) -> tuple[Any, Any]:
        return _import_torch_npu()

    @classmethod
    def probe(cls) -> Availability:
        try:
            _, npu = cls.load()
        except Exception as exc:  # torch_npu fails in many ways without CANN; the text is the reason
            return Availability(False, f"torch_npu not importable: {type(exc).__name__}: {exc}")
        try:
            if not npu.is_available():
                return Availability(False, "torch_npu imported but torch.npu.is_available() is False (no device)")
        except Exception as exc:
            return Availability(False, f"torch.npu.is_available() raised {type(exc).__name__}: {exc}")
        return Availability(True)

    def __init__(self) -> None:
        self.tnpu, self.npu = self.load()
        self._compressed_mask: torch.Tensor | None = None
        self._details: dict[str, Any] = {}

    # ----- device plumbing -----
    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.float64:
            raise TypeError("float64 never goes to the NPU (no fp64 on the AI Core); keep references on the host")
        return t.to(self.device)

    def synchronize(self) -> None:
        self.npu.synchronize()

    def timer(self, config: TimingConfig | None = None) -> Timer:
        return NpuEventTimer(self.npu)

    def environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {"torch": torch.__version__, "torch_npu": getattr(self.tnpu, "__version__", None)}
        try:
            env["device_name"] = self.npu.get_device_name()
            env["cann"] = self.tnpu.utils.get_cann_version()
        except Exception as exc:
            env["error"] = f"{type(exc).__name__}: {exc}"
        return env

    def memory_stats(self) -> dict[str, int]:
        return {"max_memory_allocated": int(self.npu.max_memory_allocated())}

    def reset_memory_stats(self) -> None:
        self.npu.reset_peak_memory_stats()
        self._details = {}  # called as each case starts: case_details() then says what this case ran

    def case_details(self) -> dict[str, Any]:
        return dict(self._details)

    # ----- norms, rotary, activation -----
    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        return self.tnpu.npu_rms_norm(x, w, epsilon=eps)[0]

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
        shape = torch.broadcast_shapes(x.shape, cos.shape)
        return self.tnpu.npu_rotary_mul(x, cos.expand(shape), sin.expand(shape), rotary_mode=style)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        return self.tnpu.npu_swiglu(x, dim=-1)


class AscendSim(Ascend):
    """The adapter over the CPU simulator: proves the adapter's logic in CI; timings mean nothing."""

    name: ClassVar[str] = "ascend-sim"
    device: ClassVar[str] = "cpu"
    ray_resources: ClassVar[dict[str, Any]] = {}  # CPU work
    simulated: ClassVar[bool] = True
    description: ClassVar[str] = "the ascend adapter over a CPU simulator of torch_npu (parity only)"
    collective_backend: ClassVar[str] = "gloo"  # the simulator's collectives run on the CPU

    @classmethod
    def place(cls, local_rank: int) -> None:
        """A CPU simulator: nothing to place."""

    @classmethod
    def load(cls) -> tuple[Any, Any]:
        from harness.backends.ascend import sim

        return sim, sim.npu

    def distribute_limits(self, device_name: str) -> Any:
        """The rules both SoCs share, without their world-size / H floors (docs/ascend.md)."""
        return SIM

    def hccl_comm_name(self, group: Any) -> str:
        """The simulator's stand-in for the HCCL name: the gloo group registered under a name its ops resolve."""
        from harness.backends.ascend.sim_moe_distribute import comm_name

        return comm_name(group)
