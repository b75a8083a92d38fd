"""The backend contract (the plugin interface): the `Backend` ABC and the values its methods answer with.

A backend wraps one execution platform (a float64 oracle, torch on the CPU, CUDA, ONNX Runtime, Ascend) behind
the ops of the kernel contract (harness/ops.py), so the runner can feed every backend the same inputs and judge
every output against the same reference. Plugins import these names from harness.backend, which re-exports them
beside the registry.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness.backend_options import BackendOption
from harness.backend_traits import BackendTraits
from harness.collective_ops import CollectiveOps
from harness.lazy import torch
from harness.names import OPS
from harness.op_types import Experts, MoeArgs, QuantSpec, Routing, RoutingSpec, SharedExpert
from harness.ops import latent_views
from harness.quant_ops import QuantOps
from harness.timing import Timer, TimingConfig, WallClockTimer

if TYPE_CHECKING:
    from harness.workload import Case


@dataclass(frozen=True)
class Availability:
    """The result of `probe()`: whether the backend can run here, and if not, a human reason."""

    available: bool
    reason: str = ""

    @property
    def state(self) -> str:
        return "available" if self.available else "unavailable"


@dataclass(frozen=True)
class Support:
    """The answer of `supports(case)`: a "no" is a skip with a reason, never an error."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


@dataclass(frozen=True)
class MathMode:
    """One way a backend computes matmuls in a dtype, as `harness calibrate` measures it: the dtype of the
    operands and the context that switches the mode on (e.g. TF32 tensor cores for float32)."""

    dtype: str
    context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext


class UnsupportedCaseError(Exception):
    """Raised by an op when a case turns out, only on trying, to be one the backend cannot run (a vendor kernel
    refuses the shape). The runner records a skip with this message, as for a `supports()` no."""


class Backend(CollectiveOps, QuantOps, BackendTraits, abc.ABC):
    """An execution backend. Implementer's checklist:

    1. Subclass (a torch device: subclass `harness.torch_backend.TorchBackend` and override only the ops you
       have native kernels for) and set the class attributes `name` (unique, kebab-case: "my-npu"), `device`,
       `dtypes` (names from DTYPES it computes in), `simulated` (True when timings say nothing about a real
       device) and `eager_reference` (True for eager torch on its device; records carry it: backend_traits.py).
    2. `probe()` (classmethod): import your SDK guardedly and return `Availability(False, reason)` with the
       import error's text when it fails. It must never raise and must be cheap: `harness list` calls it.
    3. `to_device` / `to_host`: move a host tensor in, and an output back to a host tensor. Never change dtype
       unless the device cannot hold it (then say so in `supports`).
    4. `synchronize()`: block until queued work is done; the timer calls it around timed regions.
    5. `environment()`: library versions, device name, driver / toolkit versions, as a flat JSON-able dict.
    6. The ops (`attention` is required; `rms_norm`, `rope`, `swiglu`, `route`, `moe`: override what you
       implement) with exactly the semantics of harness/ops.py. Ops you do not override are reported as
       unsupported, so cases using them are skipped with a reason rather than failing. `route` and `moe` take
       a `RoutingSpec` and return a `Routing` (harness.ops); `moe` returns (output, the Routing it applied)
       and must apply a given `routing` exactly (parity forces the reference's routing to separate arithmetic
       from routing flips) and return that one.
    7. Optionally `supports(case)` for finer refusals (a shape limit, a dtype a given op lacks): call
       `super().supports(case)` first; return `Support(False, "why")` for a skip. A refusal found only by trying
       (a vendor kernel rejecting the shape) is `raise UnsupportedCaseError("why")` from the op: also a skip.
    8. Optionally `options` (name -> BackendOption: settings a run passes with `--backend-option`; the
       constructor takes them as keyword arguments, and the backend records them in `environment()`) and
       `math_modes()` / `math_mode(dtype)` (matmul modes beyond one per dtype, measured by `harness calibrate`).
       Optionally `timer(config)` (device events, graph replay, cache flushes as the TimingConfig asks),
       `timing_input_sets()` (copies of the inputs to rotate among while timing), `memory_stats()` (peak
       bytes) and `case_details()` (which kernel a case actually ran: recorded as `implementation`).
    9. Register: one line under [project.entry-points."harness.backends"] in your pyproject, or `--plugin`.
    10. Scale-out: under torchrun, `collective_backend` names the torch.distributed backend of your device's
       process groups ("gloo" CPU, "nccl" CUDA, "hccl" Ascend; "" = none: dist ops skip), on which the dist ops
       (`moe_ep`, `attention_tp`, `llm_tp`: collective_ops.py) run; `place(local_rank)` (classmethod; default:
       nothing, right on the CPU) selects node device `local_rank` for the process before the backend is created.
       `--executor ray`: `ray_resources`, what a Ray task running it asks for ({"num_gpus": 1}; {} = host CPUs).
    """

    name: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "bfloat16", "float16"})
    simulated: ClassVar[bool] = False
    description: ClassVar[str] = ""
    calibration_group: ClassVar[str] = ""  # backends that share a device's ceilings (cuda-*): one calibration
    oracle: ClassVar[bool] = False  # a reference written from the math: timed only when a run asks (--time-oracles)
    options: ClassVar[Mapping[str, BackendOption]] = {}  # --backend-option KEY=VALUE -> constructor keyword KEY

    # ----- scale-out under torchrun (harness/sharded.py; distributed workloads) -----
    collective_backend: ClassVar[str] = "gloo"  # torch.distributed backend for this device's process groups

    @classmethod
    def place(cls, local_rank: int) -> None:
        """Make this node's device number `local_rank` the process's device for this backend (called once per
        rank, before the backend is created). CPU backends: nothing to do."""

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> Availability:
        """Can this backend run here? Never raises; the reason is shown by `harness list`."""

    @classmethod
    def calibration_key(cls) -> str:
        """Whose `harness calibrate` ceilings apply: the group's, else this backend's own."""
        return cls.calibration_group or cls.name

    @classmethod
    def implemented_ops(cls) -> frozenset[str]:
        """The contract ops this class overrides; derived, so it cannot drift from the code."""
        hooks = {op: (op,) for op in OPS} | {
            "moe": ("moe", "moe_layer", "experts"),  # the default runs route + experts
            "mla": ("mla", "attention"),  # the default runs attention on views of the latent cache
            "moe_ep": ("moe_ep", "experts"),  # distributed defaults (harness/collective_ops.py): own ops + collectives
            "attention_tp": ("attention_tp", "attention"),
            "llm_tp": ("llm_tp", "rms_norm"),  # its default needs rms_norm, rope, swiglu: backends have all or none
        }
        return frozenset(
            op for op in OPS if any(getattr(cls, m, None) is not getattr(Backend, m, None) for m in hooks[op])
        )

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        return {
            "device": cls.device,
            "dtypes": sorted(cls.dtypes),
            "ops": sorted(cls.implemented_ops()),
            "simulated": cls.simulated,
        }

    def supports(self, case: Case) -> Support:
        """Whether this backend can run the case; the default checks the op and the dtype capabilities."""
        if case.op not in self.implemented_ops():
            return Support(False, f"{self.name} does not implement op {case.op!r}")
        if case.dtype not in self.dtypes:
            return Support(
                False, f"{self.name} does not compute in {case.dtype} (supports: {', '.join(sorted(self.dtypes))})"
            )
        return YES

    @abc.abstractmethod
    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Move a host tensor onto this backend's device."""

    @abc.abstractmethod
    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        """Move an output back to a host CPU tensor."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait for all queued work on the device."""

    @abc.abstractmethod
    def environment(self) -> dict[str, Any]:
        """Library versions, device name, driver or toolkit versions."""

    def timer(self, config: TimingConfig | None = None) -> Timer:
        """The timer for this device; wall clock with synchronization unless the device has events."""
        return WallClockTimer(self.synchronize, host_cpu=self.device == "cpu")

    def math_modes(self) -> Mapping[str, MathMode]:
        """The matmul modes `harness calibrate` measures, by name (recorded in calibration files): one per dtype."""
        return {d: MathMode(d) for d in ("bfloat16", "float16", "float32") if d in self.dtypes}

    def math_mode(self, dtype: str) -> str:
        """The name of the mode (of `math_modes()`) this backend's matmuls in `dtype` run in, as configured."""
        return dtype

    def set_threads(self, threads: int) -> None:
        """Use `threads` intra-op threads in thread pools of the backend's own (an ORT session's, say); torch's
        own pool is set by the runner for every backend alike. Called once, before any case."""

    def bind(self, op: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Callable[[], Any]:
        """The op on these exact device-resident inputs as a call without arguments, for timing.

        Override to resolve per call work once (a session, its input feeds, a kernel choice), so a timed call
        measures the op and not the harness around it; the call must still compute the op every time."""
        return functools.partial(getattr(self, op), *args, **kwargs)

    def timing_input_sets(self, nbytes: int, config: TimingConfig) -> int:
        """How many copies of a case's inputs (`nbytes` together) to rotate among while timing; 1 = none.

        A device whose cache holds the inputs answers > 1, so back-to-back calls do not all run warm."""
        return 1

    def case_details(self) -> dict[str, Any]:
        """What the last case actually ran (the kernel picked, a fallback taken, math modes): recorded with it."""
        return {}

    def memory_stats(self) -> dict[str, int]:
        """Peak memory and similar counters in bytes; empty where the device keeps none."""
        return {}

    def compile_stats(self) -> dict[str, float]:
        """Seconds spent compiling / exporting since the last call (reported apart from run time), then reset."""
        return {}

    def reset_memory_stats(self) -> None:
        """Reset the peak counters before a case; a no-op where there are none."""

    # ----- the ops of the kernel contract (harness/ops.py) -----
    @abc.abstractmethod
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
        """[B,Hq,Sq,D] x [B,Hkv,Skv,D] x [B,Hkv,Skv,Dv] -> [B,Hq,Sq,Dv]; see harness.ops.attention. With a
        block_table, k and v are a paged cache (harness/paged.py): handle it, or raise UnsupportedCaseError."""

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
        """[B,H,Sq,D] x latent kv [B,Skv,D] -> [B,H,Sq,Dv]; see harness.ops.mla. The default runs this backend's
        attention with one kv head and the values a view of the latent part; override with a fused MLA kernel."""
        k, v = latent_views(kv, dv, paged_form=block_table is not None)
        paged_form = {} if block_table is None else {"block_table": block_table}  # attention written before paging
        check_accepts(self, "attention", paged_form)  # an attention without block_table: a skip naming it
        return self.attention(q, k, v, causal=causal, scale=scale, kv_lens=kv_lens, **paged_form)

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} does not implement rms_norm")

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
        raise NotImplementedError(f"{self.name} does not implement rope")

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} does not implement swiglu")

    def route(self, logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
        """[T,E] logits -> Routing(weights [T,k], ids [T,k] int64); see harness.ops.route."""
        raise NotImplementedError(f"{self.name} does not implement route")

    def moe(
        self,
        x: torch.Tensor,
        router_w: torch.Tensor,
        w_gate: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        spec: RoutingSpec,
        *,
        bias: torch.Tensor | None = None,
        shared: SharedExpert | None = None,
        routing: Routing | None = None,
        quant: QuantSpec | None = None,
    ) -> tuple[torch.Tensor, Routing]:
        """[T,H] -> ([T,H], the Routing applied); see harness.ops.moe. A given `routing` is applied as is and
        returned; without one, the Routing the layer chose, so parity can compare decisions token by token. The
        default hands them to `moe_layer` as one MoeArgs (`moe_layer_quant` with a quantized format `quant`)."""
        args = MoeArgs(x, router_w, Experts(w_gate, w_up, w_down), spec, bias, shared, routing, quant)
        return self.moe_layer(args) if quant is None else self.moe_layer_quant(args)

    def moe_layer(self, args: MoeArgs) -> tuple[torch.Tensor, Routing]:
        """The MoE layer: routes (unless given a routing) with `route` on `router_logits`, then runs `experts`. A
        backend overrides those two, or this when its kernel routes inside (a fused MoE op, an exported graph)."""
        routing = self.applied_routing(args)  # harness/quant_ops.py
        return self.experts(args.x, args.experts, routing, args.shared), routing

    def router_logits(self, x: torch.Tensor, router_w: torch.Tensor) -> torch.Tensor:
        """The [T, E] logits `moe` routes on: float32, as transformers' routers score whatever the case dtype."""
        return (x @ router_w.T).float()

    def experts(self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None) -> torch.Tensor:
        """The MoE layer after routing: the chosen SwiGLU experts combined with `routing`'s weights, plus the
        shared expert when given (SharedExpert.apply): [T, H] in the dtype of x."""
        raise NotImplementedError(f"{self.name} does not implement moe")

    def causal_lm(self, model: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        """Logits [B,S,V] of a workload model run on this backend with its own ops inside (see models/llm.py).

        `cache`: a KV cache to append to (decode); `return_model`: return the backend's bound model instead,
        for layer-wise localization.
        """
        raise NotImplementedError(f"{self.name} does not implement causal_lm")


def check_accepts(backend: Backend, op: str, kwargs: Mapping[str, Any]) -> None:
    """Raise UnsupportedCaseError when the backend's op has no parameter for an optional input the case passes
    (an op written before `block_table` existed): a skip naming the input, not a TypeError deep in the call."""
    params = inspect.signature(getattr(backend, op)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [n for n, value in kwargs.items() if value is not None and n not in params]
    if missing:
        raise UnsupportedCaseError(f"{backend.name}.{op} does not take {', '.join(missing)}")
