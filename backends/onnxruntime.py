"""ONNX Runtime backends: each op exported once through torch.onnx (dynamo, dynamic batch and sequence dims)
and run in an ORT session on the execution provider named by the backend (ort-cpu, ort-cuda, ort-cann).

The exported graph is torch-cpu's own implementation of the op, so parity asks: does the exported graph on ORT
compute what the PyTorch code did? Exports are cached on disk, keyed by op, its static arguments, dtype, static
dims and library versions; a corrupt cached model is detected (onnx.checker) and re-exported. Export and
session-creation time are reported apart from run time (the record's `compile` section).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness import ops as contract
from harness import progress
from harness.backend import Availability, Backend

log = logging.getLogger(__name__)

CACHE_ENV = "HARNESS_ONNX_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harness" / "onnx")


class _OpModule(torch.nn.Module):
    """Wraps one contract op of the torch-cpu implementation with its static keyword arguments."""

    def __init__(self, op: str, static: dict[str, Any], tensor_kwargs: tuple[str, ...]) -> None:
        super().__init__()
        from backends.torch_cpu import TorchCpu

        self.impl = getattr(TorchCpu(), op)
        self.static = static
        self.tensor_kwargs = tensor_kwargs

    def forward(self, *tensors: torch.Tensor) -> Any:
        n = len(tensors) - len(self.tensor_kwargs)
        kwargs = dict(zip(self.tensor_kwargs, tensors[n:], strict=True))
        return self.impl(*tensors[:n], **kwargs, **self.static)


@dataclass(frozen=True)
class _OrtCall:
    """One op call planned for a graph: its inputs, the static arguments that select the export, and how the
    graph's outputs become the op's return value."""

    op: str
    positional: list[torch.Tensor]
    tensor_kwargs: dict[str, torch.Tensor | None]
    static: dict[str, Any]
    post: Callable[[list[torch.Tensor]], Any]


def _first(outputs: list[torch.Tensor]) -> torch.Tensor:
    return outputs[0]


class OrtBackend(Backend):
    """One class for every provider; the subclass names it."""

    provider: ClassVar[str] = "CPUExecutionProvider"
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "float16"})  # no bfloat16 kernels on ORT CPU
    io_binding: ClassVar[bool] = False  # bind inputs / outputs to device memory (device providers)
    binding_device: ClassVar[str] = "cpu"  # where the provider allocates bound outputs

    @classmethod
    def probe(cls) -> Availability:
        try:
            import onnxruntime
        except Exception as exc:
            return Availability(
                False, f"onnxruntime not importable: {type(exc).__name__}: {exc} (pip install 'harness[onnx]')"
            )
        available = onnxruntime.get_available_providers()
        if cls.provider not in available:
            return Availability(
                False, f"{cls.provider} is not in this onnxruntime build's providers: {', '.join(available)}"
            )
        return Availability(True)

    def __init__(self) -> None:
        import onnxruntime

        self.ort = onnxruntime
        self._sessions: dict[str, Any] = {}
        self._static_only: set[str] = set()  # dynamic-export keys known to fail: go straight to static
        self._llm_modules: dict[tuple[str, str, str], torch.nn.Module] = {}  # (weights, dtype, mode) -> module
        self._fingerprints: dict[int, str] = {}
        self._compile: dict[str, float] = {}
        self._input_names: dict[int, list[str]] = {}  # per session: graph input names in order
        self._planning = False  # bind(): op methods hand back their _OrtCall instead of running it
        self.threads = 0  # intra-op threads of new sessions; 0 = ORT's default (every core)

    # ----- plumbing -----
    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host tensors, except where a provider binds device memory and torch can hold it there (CUDA)."""
        if self.io_binding and self.binding_device == "cuda" and torch.cuda.is_available():
            return t.to("cuda")
        return t.to("cpu")

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu")

    def synchronize(self) -> None:
        """session.run returns when the work is done."""

    def set_threads(self, threads: int) -> None:
        """Intra-op threads of the sessions created from now on (the runner calls this before any case)."""
        self.threads = threads

    def session_options(self) -> Any:
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        return options

    def provider_options(self) -> dict[str, Any]:
        return {}

    def environment(self) -> dict[str, Any]:
        import onnx

        return {
            "onnxruntime": self.ort.__version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "provider": self.provider,
            "provider_options": self.provider_options(),
            "intra_op_num_threads": self.threads,
            "device_name": self.ort.get_device(),
        }

    def compile_stats(self) -> dict[str, float]:
        stats, self._compile = self._compile, {}
        return stats

    # ----- export, cache, sessions -----
    def _key(
        self, op: str, static: dict[str, Any], tensors: list[torch.Tensor], names: tuple[str, ...], dynamic: bool
    ) -> str:
        """Cache key: op, static arguments, input dtypes and static dims (all dims when exported static), versions."""
        import onnx

        inputs = [
            {"name": n, "dtype": str(t.dtype), "dims": self._static_dims(n, t) if dynamic else list(t.shape)}
            for n, t in zip(names, tensors, strict=True)
        ]
        versions = {"torch": torch.__version__, "onnx": onnx.__version__, "ort": self.ort.__version__}
        blob = json.dumps(
            {"op": op, "static": static, "inputs": inputs, **versions, "format": 2}, sort_keys=True, default=str
        )
        return f"{op}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"

    @staticmethod
    def _dynamic_axes(name: str, t: torch.Tensor) -> list[int]:
        """Batch and sequence axes are dynamic; heads and head dims stay static (GQA grouping needs them)."""
        if name in ("q", "k", "v") and t.dim() == 4:
            return [0, 2]
        if name == "input_ids":  # one token (a decode step) stays static: torch.export specializes 1 anyway
            return [0, 1] if t.shape[1] > 1 else [0]
        if name.startswith("past_"):  # KV cache [B, H, P, D]: batch and cached length
            return [0, 2]
        if name in ("kv_lens", "x", "logits", "route_weights", "route_ids"):
            return [0]
        return []

    def _static_dims(self, name: str, t: torch.Tensor) -> list[int | None]:
        dyn = self._dynamic_axes(name, t)
        return [None if i in dyn else s for i, s in enumerate(t.shape)]

    def _export(
        self,
        op: str,
        static: dict[str, Any],
        tensors: list[torch.Tensor],
        names: tuple[str, ...],
        tensor_kwargs: tuple[str, ...],
        path: Path,
        dynamic: bool,
    ) -> None:
        from torch.export import Dim

        module = self._module(op, static, tensor_kwargs)
        shapes = None
        if dynamic:
            axes = (self._dynamic_axes(n, t) for n, t in zip(names, tensors, strict=True))
            specs = tuple({i: Dim.AUTO for i in a} or None for a in axes)
            # _OpModule / _ExportableMoe take the tensors positionally; the whole-model modules take input_ids
            # (and the cache, flattened).
            if op == "causal_lm":
                shapes = {"input_ids": specs[0], "past": specs[1:]} if len(specs) > 1 else {"input_ids": specs[0]}
            else:
                shapes = {"tensors": specs}
        graph = f"{op} {static['mode']}" if op == "causal_lm" else op
        dtype = next((str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()), "")
        progress.phase(f"exporting the {graph} graph ({dtype}{'' if dynamic else ', static shapes'})")
        started = time.perf_counter()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module,
                tuple(tensors),
                dynamo=True,
                dynamic_shapes=shapes,
                input_names=list(names),
                optimize=False,
                verbose=False,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            program.save(str(tmp))
            tmp.replace(path)  # never leave a half-written model where the cache looks
        self._compile["export_s"] = self._compile.get("export_s", 0.0) + time.perf_counter() - started

    def _module(self, op: str, static: dict[str, Any], tensor_kwargs: tuple[str, ...]) -> torch.nn.Module:
        if op == "causal_lm":
            return self._llm_modules[(static["weights"], static["dtype"], static["mode"])]
        if op == "moe":
            has = {k: k in static["has"] and static["has"][k] for k in ("bias", "shared", "shared_gate", "override")}
            return _ExportableMoe(static["routing"], has, static["return_routing"])
        return _OpModule(op, static, tensor_kwargs)

    def _valid(self, path: Path) -> bool:
        import onnx

        try:
            onnx.checker.check_model(str(path), full_check=False)
        except Exception as exc:
            log.warning("cached ONNX model %s is corrupt (%s: %s); re-exporting", path, type(exc).__name__, exc)
            return False
        return True

    def _session(
        self,
        op: str,
        static: dict[str, Any],
        tensors: list[torch.Tensor],
        names: tuple[str, ...],
        tensor_kwargs: tuple[str, ...],
    ) -> Any:
        """A session for the op: exported with dynamic batch / sequence dims where the code allows it, else
        (the code branches on a sequence length, e.g. Sq == Skv) with this case's static shapes."""
        for dynamic in (True, False):
            key = self._key(op, static, tensors, names, dynamic)
            if key in self._sessions:
                return self._sessions[key]
            failed = cache_dir() / f"{key}.dynamic-failed"  # kept across runs: a failing export costs seconds
            if dynamic and (key in self._static_only or failed.is_file()):
                continue
            path = cache_dir() / f"{key}.onnx"
            if not (path.is_file() and self._valid(path)):
                try:
                    self._export(op, static, tensors, names, tensor_kwargs, path, dynamic)
                except Exception as exc:
                    if not dynamic:
                        raise
                    log.info("%s: dynamic-shape export failed (%s); exporting static shapes", op, type(exc).__name__)
                    self._static_only.add(key)
                    failed.parent.mkdir(parents=True, exist_ok=True)
                    failed.write_text(f"{type(exc).__name__}: {exc}\n")
                    continue
            started = time.perf_counter()
            session = self.ort.InferenceSession(
                str(path), self.session_options(), providers=[(self.provider, self.provider_options())]
            )
            self._compile["session_s"] = self._compile.get("session_s", 0.0) + time.perf_counter() - started
            self._sessions[key] = session
            return session
        raise AssertionError("unreachable: the static export either succeeds or raises")

    def _invoke(self, call: _OrtCall) -> Any:
        """Run a planned call (or, while `bind` plans, hand the plan back unrun)."""
        if self._planning:
            return call
        return call.post(self._execute(*self._resolve(call)))

    def _resolve(self, call: _OrtCall) -> tuple[Any, list[torch.Tensor]]:
        """The call's session (exported and created on first use) and its input tensors in graph order."""
        present = {k: v for k, v in call.tensor_kwargs.items() if v is not None}
        tensors = [*call.positional, *present.values()]
        names = (*contract.OPS[call.op].inputs, *present)
        return self._session(call.op, call.static, tensors, names, tuple(present)), tensors

    def _feeds(self, session: Any, tensors: list[torch.Tensor]) -> dict[str, Any]:
        """numpy views of the inputs by graph input name (input names looked up once per session)."""
        if id(session) not in self._input_names:
            self._input_names[id(session)] = [i.name for i in session.get_inputs()]
        names = self._input_names[id(session)]
        return {name: t.detach().contiguous().numpy() for name, t in zip(names, tensors, strict=True)}

    def _execute(self, session: Any, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.io_binding:
            return self._run_bound(session, tensors)
        return [torch.from_numpy(o) for o in session.run(None, self._feeds(session, tensors))]

    def bind(self, op: str, args: Any, kwargs: Any) -> Callable[[], Any]:
        """For timing: export, session and input feeds resolved once, so a timed call is `session.run` plus
        wrapping its outputs (the feeds are views of the device-resident inputs, not copies)."""
        if op == "causal_lm" or self.io_binding:
            return super().bind(op, args, kwargs)
        self._planning = True
        try:
            call = getattr(self, op)(*args, **kwargs)
        finally:
            self._planning = False
        if not isinstance(call, _OrtCall):  # a subclass's own op that does not plan through _invoke
            return super().bind(op, args, kwargs)
        session, tensors = self._resolve(call)
        run, feeds, post = session.run, self._feeds(session, tensors), call.post

        def timed() -> Any:
            return post([torch.from_numpy(o) for o in run(None, feeds)])

        return timed

    def _run_bound(self, session: Any, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """IO binding: inputs bound where they lie (a torch CUDA tensor stays on the GPU, no host round trip),
        outputs allocated by the provider on its device, then brought back."""
        import numpy as np

        numpy_types = {
            torch.float32: np.float32,
            torch.float16: np.float16,
            torch.int64: np.int64,
            torch.int32: np.int32,
            torch.bool: np.bool_,
        }
        binding = session.io_binding()
        held = []  # the bound buffers must outlive the run
        for meta, tensor in zip(session.get_inputs(), tensors, strict=True):
            t = tensor.detach().contiguous()
            held.append(t)
            device = "cuda" if t.is_cuda else "cpu"
            binding.bind_input(
                meta.name, device, t.device.index or 0, numpy_types[t.dtype], list(t.shape), t.data_ptr()
            )
        for meta in session.get_outputs():
            binding.bind_output(meta.name, self.binding_device)
        session.run_with_iobinding(binding)
        return [torch.from_numpy(a) for a in binding.copy_outputs_to_cpu()]

    # ----- the ops -----
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
    ) -> torch.Tensor:
        static = {"causal": causal, "window": window, "scale": scale}
        return self._invoke(_OrtCall("attention", [q, k, v], {"kv_lens": kv_lens}, static, _first))

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        return self._invoke(_OrtCall("rms_norm", [x, w], {}, {"eps": eps}, _first))

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str = "half") -> torch.Tensor:
        return self._invoke(_OrtCall("rope", [x, cos, sin], {}, {"style": style}, _first))

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        return self._invoke(_OrtCall("swiglu", [x], {}, {}, _first))

    def route(
        self,
        logits: torch.Tensor,
        *,
        top_k: int,
        scheme: str,
        bias: torch.Tensor | None = None,
        n_group: int = 1,
        topk_group: int = 1,
        scaling: float = 1.0,
        renormalize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        static = {
            "top_k": top_k,
            "scheme": scheme,
            "n_group": n_group,
            "topk_group": topk_group,
            "scaling": scaling,
            "renormalize": renormalize,
        }
        return self._invoke(_OrtCall("route", [logits], {"bias": bias}, static, tuple))

    def moe(
        self,
        x: torch.Tensor,
        router_w: torch.Tensor,
        w_gate: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        *,
        top_k: int,
        scheme: str,
        bias: torch.Tensor | None = None,
        n_group: int = 1,
        topk_group: int = 1,
        scaling: float = 1.0,
        renormalize: bool,
        shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        shared_gate: torch.Tensor | None = None,
        routing_override: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_routing: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        routing = {
            "top_k": top_k,
            "scheme": scheme,
            "n_group": n_group,
            "topk_group": topk_group,
            "scaling": scaling,
            "renormalize": renormalize,
        }
        extra: dict[str, torch.Tensor | None] = {"bias": bias}
        if shared is not None:
            extra.update(shared_w_gate=shared[0], shared_w_up=shared[1], shared_w_down=shared[2])
        extra["shared_gate"] = shared_gate
        if routing_override is not None:
            extra.update(route_weights=routing_override[0].float(), route_ids=routing_override[1].long())
        has = {
            "bias": bias is not None,
            "shared": shared is not None,
            "shared_gate": shared_gate is not None,
            "override": routing_override is not None,
        }
        static = {"routing": routing, "has": has, "return_routing": return_routing}
        return self._invoke(
            _OrtCall("moe", [x, router_w, w_gate, w_up, w_down], extra, static, tuple if return_routing else _first)
        )

    def causal_lm(self, model: Any, input_ids: torch.Tensor, *, cache: Any = None, return_model: bool = False) -> Any:
        """Logits of the workload model exported whole (torch-cpu's ops bound in, MoE in the dense form).

        With `cache` (a transformers DynamicCache): KV-cache graphs. The first step runs a prefill graph that
        also returns every layer's keys and values; later steps run a decode graph that takes them as inputs
        (past length a dynamic dim) and returns them grown. The new entries are appended to `cache`, so its
        length, cropping and reuse behave as with a torch model.
        """
        if return_model:
            raise NotImplementedError(f"{self.name} runs an exported graph: no torch model for layer-wise replay")
        if cache is None:  # the prefill graph; its keys and values are dropped
            return self._llm_run(model, "prefill", input_ids, [])[0]
        layers = _cache_layers(cache)
        past_len = cache.get_seq_length() if layers else 0
        past = [t for layer in layers for t in (layer.keys, layer.values)] if past_len else []
        outputs = self._llm_run(model, "decode" if past else "prefill", input_ids, past)
        logits, presents = outputs[0], outputs[1:]
        for i in range(len(presents) // 2):
            cache.update(presents[2 * i][:, :, past_len:], presents[2 * i + 1][:, :, past_len:], i)
        return logits

    def _llm_run(self, model: Any, mode: str, input_ids: torch.Tensor, past: list[torch.Tensor]) -> list[torch.Tensor]:
        if id(model) not in self._fingerprints:  # weights identify the export: computed once per model
            digest = hashlib.sha256()
            for name, p in sorted(model.master.state_dict().items()):
                digest.update(f"{name}{tuple(p.shape)}{float(p.double().sum()):.17g}".encode())
            self._fingerprints[id(model)] = digest.hexdigest()[:16]
        static = {
            "model": model.name,
            "dtype": str(model.dtype),
            "weights": self._fingerprints[id(model)],
            "mode": mode,
        }
        key = (static["weights"], static["dtype"], mode)  # the master's weights are one for every dtype
        if key not in self._llm_modules:
            self._llm_modules[key] = _LlmGraph(model.for_backend(_export_ops()), mode)
        past_kwargs = {f"past_{i}": t for i, t in enumerate(past)}
        return self._invoke(_OrtCall("causal_lm", [input_ids], past_kwargs, static, list))


def _cache_layers(cache: Any) -> list[Any]:
    """The per-layer key / value holders of a transformers DynamicCache (empty before the first step)."""
    return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "keys", None) is not None]


class _LlmGraph(torch.nn.Module):
    """The bound model as an exportable function: logits plus every layer's keys and values (prefill: no cache
    in; decode: the cache in, flattened as k_0, v_0, k_1, v_1, ...). One graph per mode, model and dtype."""

    def __init__(self, bound: torch.nn.Module, mode: str) -> None:
        super().__init__()
        self.bound, self.mode = bound, mode

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> Any:
        from models.llm_bind import forward, new_cache

        cache = new_cache(self.bound)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        logits = forward(self.bound, input_ids, cache)
        return (logits, *[t for layer in _cache_layers(cache) for t in (layer.keys, layer.values)])


def _export_ops() -> Any:
    from backends.torch_cpu import TorchCpu

    class ExportOps(TorchCpu):
        """torch-cpu's ops with MoE in the export-friendly dense form (the grouped loop is data-dependent)."""

        name: ClassVar[str] = "ort-export"

        def moe(
            self,
            x,
            router_w,
            w_gate,
            w_up,
            w_down,
            *,
            shared=None,
            shared_gate=None,
            bias=None,
            routing_override=None,
            return_routing=False,
            **routing,
        ):
            has = {
                "bias": bias is not None,
                "shared": shared is not None,
                "shared_gate": shared_gate is not None,
                "override": False,
            }
            extra = [t for t in (bias, *(shared or ()), shared_gate) if t is not None]
            return _ExportableMoe(routing, has, False)(x, router_w, w_gate, w_up, w_down, *extra)

    return ExportOps()


class OrtCpu(OrtBackend):
    name: ClassVar[str] = "ort-cpu"
    provider: ClassVar[str] = "CPUExecutionProvider"
    description: ClassVar[str] = "ONNX Runtime, CPU execution provider (torch.onnx dynamo export of each op)"


class OrtCuda(OrtBackend):
    name: ClassVar[str] = "ort-cuda"
    provider: ClassVar[str] = "CUDAExecutionProvider"
    device: ClassVar[str] = "cuda"
    io_binding: ClassVar[bool] = True
    binding_device: ClassVar[str] = "cuda"
    description: ClassVar[str] = "ONNX Runtime, CUDA execution provider (onnxruntime-gpu)"


class OrtCann(OrtBackend):
    name: ClassVar[str] = "ort-cann"
    provider: ClassVar[str] = "CANNExecutionProvider"
    device: ClassVar[str] = "npu"
    io_binding: ClassVar[bool] = True
    binding_device: ClassVar[str] = "cann"  # inputs come from the host (torch_npu tensors are not bound)
    description: ClassVar[str] = "ONNX Runtime, CANN execution provider (onnxruntime-cann, Ascend)"

    def provider_options(self) -> dict[str, Any]:
        # CANN's default precision_mode is force_fp16: float32 models would silently run in float16.
        return {"precision_mode": "must_keep_origin_dtype"}


class _ExportableMoe(torch.nn.Module):
    """The MoE layer in a form torch.export can trace: routing by harness.ops.route_scores (torch-cpu's
    rule), then every expert over every token with the combine weights scattered densely (zero where a token
    is not routed). Same function as torch-cpu's grouped path, without its data-dependent expert loop."""

    def __init__(self, routing: dict[str, Any], has: dict[str, bool], return_routing: bool) -> None:
        super().__init__()
        self.routing, self.has, self.return_routing = routing, has, return_routing

    def forward(self, *tensors: torch.Tensor) -> Any:
        """tensors: x, router_w, w_gate, w_up, w_down, then the optional ones present (in `has` order)."""
        x, router_w, w_gate, w_up, w_down = tensors[:5]
        it = iter(tensors[5:])
        bias = next(it) if self.has["bias"] else None
        shared = (next(it), next(it), next(it)) if self.has["shared"] else None
        shared_gate = next(it) if self.has["shared_gate"] else None
        if self.has["override"]:
            weights, ids = next(it).float(), next(it)
        else:
            weights, ids = contract.route_scores(
                (x @ router_w.T).float(), bias=None if bias is None else bias.float(), **self.routing
            )
        E = w_gate.shape[0]
        dense = torch.zeros(x.shape[0], E, dtype=torch.float32).scatter_add(1, ids, weights)  # [T, E]
        xe = x.expand(E, *x.shape)  # [E, T, H]: every expert over every token, one batched GEMM per projection
        hidden = torch.nn.functional.silu(xe @ w_gate.transpose(1, 2)) * (xe @ w_up.transpose(1, 2))  # [E, T, F]
        y = hidden @ w_down.transpose(1, 2)  # [E, T, H]
        out = (dense.T[:, :, None] * y.float()).sum(dim=0)  # [T, H] in float32
        if shared is not None:
            s = (torch.nn.functional.silu(x @ shared[0].T) * (x @ shared[1].T)) @ shared[2].T
            if shared_gate is not None:
                s = s * torch.sigmoid(x @ shared_gate.T)
            out = out + s.float()
        out = out.to(x.dtype)
        return (out, weights, ids) if self.return_routing else out
