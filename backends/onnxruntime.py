"""ONNX Runtime backends: each op exported once through torch.onnx (dynamo, dynamic batch and sequence dims)
and run in an ORT session on the execution provider named by the backend (ort-cpu, ort-cuda, ort-cann).

The exported graph is torch-cpu's own implementation of the op, so parity asks: does the exported graph on ORT
compute what the PyTorch code did? What is exported, and the on-disk cache of exports, live in
backends/onnx_export.py. Export and session-creation time are reported apart from run time (the record's
`compile` section).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from harness import interrupts
from harness.backend import Availability, Backend, Support, UnsupportedCaseError
from harness.lazy import LazyModule, torch
from harness.names import OPS, QUANT_FORMATS
from harness.op_types import Experts, MoeArgs, QuantSpec, Routing, RoutingSpec, SharedExpert, moe_inputs

log = logging.getLogger(__name__)

# What is exported (torch.nn modules) and the cache: imported on use.
graphs = LazyModule("harness.backends.onnx_export")
quant_graphs = LazyModule("harness.backends.ort_quant")  # w8a8 linear as standard ONNX ops; fp8: the skip reason


@dataclass(frozen=True)
class _OrtCall:
    """One op call planned for a graph: its inputs, the static arguments that select the export, and how the
    graph's outputs become the op's return value."""

    op: str
    positional: list[torch.Tensor]
    tensor_kwargs: dict[str, torch.Tensor | None]
    static: dict[str, Any]
    post: Callable[[list[torch.Tensor]], Any]
    weights: graphs.Weights | None = None  # initializers that replace the graph's own (an LLM of another seed)


def _first(outputs: list[torch.Tensor]) -> torch.Tensor:
    return outputs[0]


def _routing(outputs: list[torch.Tensor]) -> Routing:
    """A graph's (weights, ids) outputs as the contract's Routing."""
    return Routing(outputs[0], outputs[1])


class OrtBackend(Backend):
    """One class for every provider; the subclass names it."""

    provider: ClassVar[str] = "CPUExecutionProvider"
    device: ClassVar[str] = "cpu"
    # no bfloat16 kernels on ORT CPU; w8a8 on `linear` (fp8 formats: a skip with ort_quant's reason, `supports`)
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "float16", "w8a8"})
    io_binding: ClassVar[bool] = False  # bind inputs / outputs to device memory (device providers)
    binding_device: ClassVar[str] = "cpu"  # where the provider allocates bound outputs
    collective_backend: ClassVar[str] = ""  # ONNX Runtime has no collectives: dist.* cases are skips

    def supports(self, case: Any) -> Support:
        """The fp8 formats are not in `dtypes` (nothing here computes them) but get the reason why, not a bare
        "does not compute in fp8"."""
        if case.dtype in QUANT_FORMATS and case.dtype not in self.dtypes and case.op in self.implemented_ops():
            return Support(False, quant_graphs.NO_FP8.format(fmt=case.dtype))
        return super().supports(case)

    @classmethod
    def probe(cls) -> Availability:
        try:
            with interrupts.deferred():  # a Ctrl-C inside the native module's init would abort the process
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
        with interrupts.deferred():  # onnx's pybind11 init aborts the process (SIGABRT) on a KeyboardInterrupt
            import onnx  # noqa: F401  (first here, so the exporter's later imports find it loaded)
            import onnxruntime

        self.ort = onnxruntime
        self._sessions: dict[str, Any] = {}
        self._exports = graphs.ExportCache(onnxruntime.__version__)
        self._llm_modules: dict[tuple[str, str, str], torch.nn.Module] = {}  # (architecture, dtype, mode) -> graph
        self._unshareable: set[tuple[str, str, str]] = set()  # LLM graphs that cannot take another seed's weights
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
        if self._exports.export_s:
            self._compile["export_s"] = self._exports.export_s
            self._exports.export_s = 0.0
        stats, self._compile = self._compile, {}
        return stats

    # ----- export, cache, sessions -----
    def _session(self, call: _OrtCall, tensors: list[torch.Tensor], names: tuple[str, ...]) -> Any:
        """A session for the call: its graph exported with dynamic batch / sequence dims where the code allows,
        else (the code branches on a sequence length, e.g. Sq == Skv) with this case's static shapes. With
        weights, the session runs the cached graph on those tensors instead of the ones it was exported with."""
        tensor_kwargs = tuple(n for n in names if n not in OPS[call.op].inputs)
        for dynamic in (True, False):
            key = self._exports.key(call.op, call.static, tensors, names, dynamic)
            session_key = key if call.weights is None else f"{key}@{call.weights.fingerprint}"
            if session_key in self._sessions:
                return self._sessions[session_key]
            path = self._exports.model_file(
                key, dynamic, lambda: self._module(call, tensor_kwargs), call.op, call.static, tensors, names
            )
            if path is None:
                continue
            started = time.perf_counter()
            source = str(path) if call.weights is None else self._exports.with_weights(path, call.weights)
            session = self.ort.InferenceSession(
                source, self.session_options(), providers=[(self.provider, self.provider_options())]
            )
            self._compile["session_s"] = self._compile.get("session_s", 0.0) + time.perf_counter() - started
            self._sessions[session_key] = session
            return session
        raise AssertionError("unreachable: the static export either succeeds or raises")

    def _module(self, call: _OrtCall, tensor_kwargs: tuple[str, ...]) -> torch.nn.Module:
        """What to export for a call: an LLM graph, the dense MoE form, or torch-cpu's op."""
        op, static = call.op, call.static
        if op == "causal_lm":
            return self._llm_modules[(static["architecture"], static["dtype"], static["mode"])]
        if op == "moe":
            return graphs.ExportableMoe(static["spec"], tensor_kwargs)
        return graphs.OpModule(op, static, tensor_kwargs)

    def _invoke(self, call: _OrtCall) -> Any:
        """Run a planned call (or, while `bind` plans, hand the plan back unrun)."""
        if self._planning:
            return call
        return call.post(self._execute(*self._resolve(call)))

    def _resolve(self, call: _OrtCall) -> tuple[Any, list[torch.Tensor]]:
        """The call's session (exported and created on first use) and its input tensors in graph order."""
        present = {k: v for k, v in call.tensor_kwargs.items() if v is not None}
        tensors = [*call.positional, *present.values()]
        names = (*OPS[call.op].inputs, *present)
        return self._session(call, tensors, names), tensors

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
        wrapping its outputs (the feeds are views of the device-resident inputs, not copies; an input that is not
        contiguous is copied inside every call, so a timed call reads what its inputs hold then)."""
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
        run, post = session.run, call.post
        if not all(t.is_contiguous() for t in tensors):  # a strided view (MLA's values): its copy is the call's work

            def copying() -> Any:
                return post([torch.from_numpy(o) for o in run(None, self._feeds(session, tensors))])

            return copying
        feeds = self._feeds(session, tensors)

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

    def linear(self, x: torch.Tensor, w: torch.Tensor, *, quant: QuantSpec | None = None) -> torch.Tensor:
        """torch-cpu's x @ w^T exported; w8a8 a graph of standard ops (backends/ort_quant.py); fp8 a skip."""
        if quant is None:
            return self._invoke(_OrtCall("linear", [x, w], {}, {}, _first))
        if quant.format != "w8a8":
            raise UnsupportedCaseError(quant_graphs.NO_FP8.format(fmt=quant.format))
        key = "w8a8-linear"
        if key not in self._sessions:
            started = time.perf_counter()
            model = quant_graphs.w8a8_linear_model().SerializeToString()
            self._sessions[key] = self.ort.InferenceSession(
                model, self.session_options(), providers=[(self.provider, self.provider_options())]
            )
            self._compile["session_s"] = self._compile.get("session_s", 0.0) + time.perf_counter() - started
        return quant_graphs.run_w8a8(self._sessions[key], x, w)

    def quant_experts(
        self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None, quant: QuantSpec
    ) -> torch.Tensor:
        if quant.format != "w8a8":
            raise UnsupportedCaseError(quant_graphs.NO_FP8.format(fmt=quant.format))
        raise UnsupportedCaseError(f"{self.name} exports only `linear` in w8a8, not the quantized MoE layer")

    def route(self, logits: torch.Tensor, spec: RoutingSpec, *, bias: torch.Tensor | None = None) -> Routing:
        return self._invoke(_OrtCall("route", [logits], {"bias": bias}, {"spec": spec}, _routing))

    def moe_layer(self, args: MoeArgs) -> tuple[torch.Tensor, Routing]:
        """The dense MoE graph, which also outputs the routing it chose, unless one is given (then that one is
        returned)."""
        given = args.routing
        fed = None if given is None else Routing(given.weights.float(), given.ids.long())
        extra = moe_inputs(args.bias, args.shared, fed)

        def post(outputs: list[torch.Tensor]) -> tuple[torch.Tensor, Routing]:
            return outputs[0], given if given is not None else _routing(outputs[1:])

        tensors = [args.x, args.router_w, *args.experts.tensors()]
        return self._invoke(_OrtCall("moe", tensors, extra, {"spec": args.spec}, post))

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
        layers = graphs.cache_layers(cache)
        past_len = cache.get_seq_length() if layers else 0
        past = [t for layer in layers for t in (layer.keys, layer.values)] if past_len else []
        outputs = self._llm_run(model, "decode" if past else "prefill", input_ids, past)
        logits, presents = outputs[0], outputs[1:]
        for i in range(len(presents) // 2):
            cache.update(presents[2 * i][:, :, past_len:], presents[2 * i + 1][:, :, past_len:], i)
        return logits

    def _llm_run(self, model: Any, mode: str, input_ids: torch.Tensor, past: list[torch.Tensor]) -> list[torch.Tensor]:
        """One step through the model's graph. The graph is exported once per architecture, dtype and mode and
        serves every seed: a session takes the model's own weights as initializers by name."""
        arch = model.cached("onnx-architecture", lambda: graphs.architecture(model.config))
        static = {"model": model.name, "dtype": str(model.dtype), "architecture": arch, "mode": mode}
        graph = graphs.LlmGraph(model.for_backend(graphs.export_ops()), mode)
        weights = graphs.Weights(model.cached("onnx-weights", lambda: graphs.fingerprint(model.master)), graph)
        if (arch, static["dtype"], mode) in self._unshareable:  # this exporter folds a weight: one graph per seed
            static["weights"], weights = weights.fingerprint, None
        self._llm_modules[(arch, static["dtype"], mode)] = graph  # what an export of this key traces
        past_kwargs = {f"past_{i}": t for i, t in enumerate(past)}
        try:
            return self._invoke(_OrtCall("causal_lm", [input_ids], past_kwargs, static, list, weights))
        except graphs.NotShareableError as exc:
            log.info("%s: %s; exporting one graph per weight set", model.name, exc)
            self._unshareable.add((arch, static["dtype"], mode))
            return self._llm_run(model, mode, input_ids, past)


class OrtCpu(OrtBackend):
    name: ClassVar[str] = "ort-cpu"
    provider: ClassVar[str] = "CPUExecutionProvider"
    description: ClassVar[str] = "ONNX Runtime, CPU execution provider (torch.onnx dynamo export of each op)"


class OrtCuda(OrtBackend):
    name: ClassVar[str] = "ort-cuda"
    provider: ClassVar[str] = "CUDAExecutionProvider"
    device: ClassVar[str] = "cuda"
    ray_resources: ClassVar[dict[str, Any]] = {"num_gpus": 1}
    io_binding: ClassVar[bool] = True
    binding_device: ClassVar[str] = "cuda"
    description: ClassVar[str] = "ONNX Runtime, CUDA execution provider (onnxruntime-gpu)"


class OrtCann(OrtBackend):
    name: ClassVar[str] = "ort-cann"
    provider: ClassVar[str] = "CANNExecutionProvider"
    device: ClassVar[str] = "npu"
    ray_resources: ClassVar[dict[str, Any]] = {"resources": {"NPU": 1}}  # `ray start --resources '{"NPU": 8}'`
    io_binding: ClassVar[bool] = True
    binding_device: ClassVar[str] = "cann"  # inputs come from the host (torch_npu tensors are not bound)
    description: ClassVar[str] = "ONNX Runtime, CANN execution provider (onnxruntime-cann, Ascend)"

    def provider_options(self) -> dict[str, Any]:
        # CANN's default precision_mode is force_fp16: float32 models would silently run in float16.
        return {"precision_mode": "must_keep_origin_dtype"}
