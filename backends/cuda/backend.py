"""`cuda`: torch on an NVIDIA GPU, the fastest correct kernel per case; `cuda-<kernel>`: SDPA pinned to one kernel.

`cuda` times cuDNN, flash and memory-efficient SDPA on each attention shape and keeps the fastest that takes the
case (attention.py); absorbed MLA the faster of two GEMMs and heads-as-rows SDPA (mla.py); MoE runs on grouped
GEMMs (moe.py); other ops are the generic torch ones on the device.
`cuda-cudnn`, `cuda-flash`, `cuda-efficient`, `cuda-math` pin attention to one kernel so a report puts them side by
side. Options (`harness run --backend-option KEY=VALUE`): `tf32` (float32 matmuls on TF32 tensor cores; off by
default, `--allow-tf32`), `graphs` (time by CUDA-graph replay; on, `--no-graphs`) and `cold_cache` (flush L2 before
every timed call; off, `--cold-cache`). Every record keeps them (environment; `implementation.tf32`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from harness import paged
from harness.backend import Availability, MathMode, UnsupportedCaseError
from harness.backend_options import BackendOption
from harness.lazy import torch
from harness.names import QUANT_FORMATS
from harness.op_types import Experts, MoeArgs, QuantSpec, Routing, RoutingSpec, SharedExpert
from harness.timing import Timer, TimingConfig
from harness.torch_backend import TorchBackend

MAX_INPUT_SETS = 32
TF32_MODE = "float32_tf32"  # the calibration mode name of float32 matmuls on TF32 tensor cores (kept in files)

OPTIONS: Mapping[str, BackendOption] = {
    "tf32": BackendOption.flag(
        "let float32 matmuls and convolutions use TF32 tensor cores (recorded; torch's flag is process-wide, so "
        "every cuda backend of a run takes the same value)",
        process_wide=True,
    ),
    "graphs": BackendOption.flag(
        "time by replaying a captured CUDA graph of the calls (ops that cannot be captured fall back to events)",
        default=True,
    ),
    "cold_cache": BackendOption.flag("flush the L2 cache before every timed call (one call per sample)"),
}


AUTO_KERNELS = ("cudnn", "flash", "efficient")  # math only as the fallback when none of these takes a case


def _cpu_only_torch() -> str | None:
    """The installed torch's version when its distribution says it is a CPU-only build ("2.13.0+cpu"), else None."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
    return version if version.endswith("+cpu") else None


@contextlib.contextmanager
def _tf32_matmuls(allowed: bool) -> Iterator[None]:
    """float32 matmuls with TF32 allowed or not for the duration, whatever the backend's own setting."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class Cuda(TorchBackend):
    name: ClassVar[str] = "cuda"
    device: ClassVar[str] = "cuda"
    ray_resources: ClassVar[dict[str, Any]] = {"num_gpus": 1}
    eager_reference: ClassVar[bool] = True  # SDPA as torch picks it: the cuda-* variants pin one kernel
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "bfloat16", "float16", *QUANT_FORMATS})
    description: ClassVar[str] = "torch on an NVIDIA GPU: per-shape fastest SDPA kernel, grouped-GEMM MoE, graphs"
    kernels: ClassVar[tuple[str, ...]] = AUTO_KERNELS
    calibration_group: ClassVar[str] = "cuda"  # every cuda-* variant runs on the same device ceilings
    options: ClassVar[Mapping[str, BackendOption]] = OPTIONS
    collective_backend: ClassVar[str] = "nccl"

    @classmethod
    def place(cls, local_rank: int) -> None:
        """cuda:LOCAL_RANK for the whole process ("cuda" means the current device everywhere in this backend)."""
        torch.cuda.set_device(local_rank)

    @classmethod
    def probe(cls) -> Availability:
        cpu_build = _cpu_only_torch()
        if cpu_build:  # known from the installed distribution, without importing torch (harness list stays fast)
            return Availability(False, f"torch {cpu_build} is a CPU-only build (torch.version.cuda is None)")
        if torch.version.cuda is None:
            return Availability(False, f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")
        if not torch.cuda.is_available():
            return Availability(
                False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: no driver or no device"
            )
        return Availability(True)

    def __init__(self, *, tf32: bool = False, graphs: bool = True, cold_cache: bool = False) -> None:
        from harness.backends.cuda.attention import SdpaAttention
        from harness.backends.cuda.mla import CudaMla
        from harness.backends.cuda.moe import GroupedMoe
        from harness.backends.cuda.quant import CudaQuant

        self.tf32 = tf32
        self.graphs = graphs
        self.cold_cache = cold_cache
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        self._attention = SdpaAttention(self.kernels)
        self._mla = CudaMla(self._attention)
        self._moe = GroupedMoe()
        self._quant = CudaQuant()
        self._details: dict[str, Any] = {}
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        self.l2_bytes = int(getattr(props, "L2_cache_size", 50 << 20))

    # ----- device plumbing -----
    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def timer(self, config: TimingConfig | None = None) -> Timer:
        from harness.backends.cuda.timing import CudaTimer

        return CudaTimer(config or TimingConfig(), self.l2_bytes, graphs=self.graphs, cold_cache=self.cold_cache)

    def timing_input_sets(self, nbytes: int, config: TimingConfig) -> int:
        if not config.rotate_inputs or self.cold_cache or nbytes >= self.l2_bytes:
            return 1
        return min(MAX_INPUT_SETS, max(2, math.ceil(2 * self.l2_bytes / max(nbytes, 1))))

    def memory_stats(self) -> dict[str, int]:
        return {
            "max_memory_allocated": int(torch.cuda.max_memory_allocated()),
            "max_memory_reserved": int(torch.cuda.max_memory_reserved()),
        }

    def reset_memory_stats(self) -> None:
        torch.cuda.reset_peak_memory_stats()
        self._details = {}

    def math_modes(self) -> Mapping[str, MathMode]:
        """One mode per dtype with TF32 off, and float32 on TF32 tensor cores (TF32_MODE)."""
        plain = super().math_modes()
        modes = {name: MathMode(mode.dtype, lambda: _tf32_matmuls(False)) for name, mode in plain.items()}
        if "float32" in self.dtypes:
            modes[TF32_MODE] = MathMode("float32", lambda: _tf32_matmuls(True))
        return modes

    def math_mode(self, dtype: str) -> str:
        return TF32_MODE if dtype == "float32" and self.tf32 else dtype

    def case_details(self) -> dict[str, Any]:
        return {"tf32": self.tf32, **self._details}

    def environment(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env: dict[str, Any] = {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "device_name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "l2_bytes": self.l2_bytes,
            "tf32": self.tf32,
            "graphs": self.graphs,
            "cold_cache": self.cold_cache,
            "sdpa_kernels": list(self.kernels),
        }
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as exc:  # the NVML binding is optional; say why the driver version is missing
            env["driver"] = f"unknown ({type(exc).__name__})"
        return env

    # ----- ops -----
    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = False,
        window: int | None = None,
        scale: float | None = None,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if block_table is not None:  # paged: gathered in logical order on the GPU, then the contiguous kernels
            if kv_lens is None:
                raise UnsupportedCaseError("a paged cache (block_table) needs kv_lens")
            k, v = paged.to_contiguous(k, v, block_table, kv_lens)  # [B, Hkv, MB*BS, D]
        out = self._attention(q, k, v, causal=causal, window=window, scale=scale, kv_lens=kv_lens)
        choice = self._attention.last
        if choice is not None:
            self._details["attention"] = {
                "kernel": choice.kernel,
                "split_per_sequence": choice.split,
                "tried": choice.tried,
            }
            if block_table is not None:
                self._details["attention"]["paged"] = "gathered in logical order, then the contiguous kernel"
        return out

    def mla(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        *,
        dv: int,
        scale: float,
        causal: bool = True,
        kv_lens: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Absorbed MLA: the faster of two GEMMs and heads-as-rows SDPA, per shape (cuda/mla.py)."""
        out = self._mla(q, kv, dv=dv, scale=scale, causal=causal, kv_lens=kv_lens, block_table=block_table)
        choice = self._mla.last
        if choice is not None:
            self._details["mla"] = {"path": choice.path, "tried": choice.tried}
            if block_table is not None:
                self._details["mla"]["paged"] = "gathered in logical order, then the contiguous path"
        return out

    def experts(self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None) -> torch.Tensor:
        out = self._moe(x, *experts.tensors(), routing, shared=shared)
        self._details["moe"] = self._moe.path
        return out

    def route(self, logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
        """The fused route kernel on the GPU (moe_route.py): float64 selection, an exact tie to the lower index."""
        from harness.backends.cuda import moe_route

        fused = self._moe._fused(logits, logits.shape[1])
        return moe_route.route(logits, spec, bias, fused).routing(logits.dtype)

    def moe_layer(self, args: MoeArgs) -> tuple[torch.Tensor, Routing]:
        """Free routing runs route, counting and permutation fused (GroupedMoe.routed_layer); a given one `experts`."""
        if args.routing is not None:
            return super().moe_layer(args)
        logits = args.x @ args.router_w.T  # [T, E] in x's dtype: the route step scores it in float32 (router_logits)
        out, routing = self._moe.routed_layer(
            args.x, logits, args.experts.tensors(), args.spec, bias=args.bias, shared=args.shared
        )
        self._details["moe"] = self._moe.path
        return out, routing

    def linear(self, x: torch.Tensor, w: torch.Tensor, *, quant: QuantSpec | None = None) -> torch.Tensor:
        """A quantized format through torch._int_mm / torch._scaled_mm (cuda/quant.py; `implementation.quant`)."""
        if quant is None:
            return super().linear(x, w)
        out = self._quant.linear(x, w, quant)
        self._details["quant"] = dict(self._quant.path)
        return out

    def quant_experts(
        self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None, quant: QuantSpec
    ) -> torch.Tensor:
        out = self._quant.experts(x, experts, routing, shared, quant)
        self._details["quant"] = dict(self._quant.path)
        return out


class CudaCudnn(Cuda):
    name: ClassVar[str] = "cuda-cudnn"
    description: ClassVar[str] = "cuda with attention pinned to SDPA's cuDNN kernel"
    kernels: ClassVar[tuple[str, ...]] = ("cudnn",)


class CudaFlash(Cuda):
    name: ClassVar[str] = "cuda-flash"
    description: ClassVar[str] = "cuda with attention pinned to SDPA's flash kernel (FA2)"
    kernels: ClassVar[tuple[str, ...]] = ("flash",)


class CudaEfficient(Cuda):
    name: ClassVar[str] = "cuda-efficient"
    description: ClassVar[str] = "cuda with attention pinned to SDPA's memory-efficient kernel (GQA: repeated kv)"
    kernels: ClassVar[tuple[str, ...]] = ("efficient",)


class CudaMath(Cuda):
    name: ClassVar[str] = "cuda-math"
    description: ClassVar[str] = "cuda with attention pinned to SDPA's math fallback (the unfused baseline)"
    kernels: ClassVar[tuple[str, ...]] = ("math",)
