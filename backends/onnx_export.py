"""What the ONNX Runtime backends run, and the cache of its exports.

Each op is torch-cpu's own implementation wrapped as a module (OpModule), the MoE layer in a dense form that
torch.export can trace (ExportableMoe), and an LLM as prefill / decode KV-cache graphs (LlmGraph). Exports are
kept on disk (ExportCache); an LLM graph is exported once per architecture, dtype and mode and serves every
weight set (seed or checkpoint) by taking that model's tensors as its initializers (ExportCache.with_weights).
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

from harness import ops, progress
from harness.op_types import MoeArgs, Routing, RoutingSpec, TensorGroup, moe_inputs, moe_kwargs

log = logging.getLogger(__name__)

CACHE_ENV = "HARNESS_ONNX_CACHE"
SHARE_LIMIT_BYTES = 1 << 30  # an LLM graph this large is exported per weight set rather than rewritten in memory


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harness" / "onnx")


class ExportCache:
    """Exported ONNX files on disk (under cache_dir()), keyed by op, static arguments, input dtypes and static
    dims, and library versions. A corrupt file is detected and exported again; a dynamic-shape export that
    failed is remembered (a marker beside the files), so later runs go straight to static shapes."""

    def __init__(self, ort_version: str) -> None:
        self.ort_version = ort_version
        self.export_s = 0.0  # seconds spent exporting, for the backend's compile statistics
        self._static_only: set[str] = set()

    def model_file(
        self,
        key: str,
        dynamic: bool,
        module: Callable[[], torch.nn.Module],
        op: str,
        static: dict[str, Any],
        tensors: list[torch.Tensor],
        names: tuple[str, ...],
    ) -> Path | None:
        """The model file of `key`, exported now if it is missing or corrupt; None when a dynamic-shape export
        fails (or failed before): the caller then asks for static shapes."""
        failed = cache_dir() / f"{key}.dynamic-failed"
        if dynamic and (key in self._static_only or failed.is_file()):
            return None
        path = cache_dir() / f"{key}.onnx"
        if path.is_file() and self.valid(path):
            return path
        try:
            self.export(module(), op, static, tensors, names, path, dynamic)
        except Exception as exc:
            if not dynamic:
                raise
            log.info("%s: dynamic-shape export failed (%s); exporting static shapes", op, type(exc).__name__)
            self._static_only.add(key)
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(f"{type(exc).__name__}: {exc}\n")
            return None
        return path

    def key(
        self, op: str, static: dict[str, Any], tensors: list[torch.Tensor], names: tuple[str, ...], dynamic: bool
    ) -> str:
        """Cache key: op, static arguments, input dtypes and static dims (all dims when exported static), versions."""
        import onnx

        inputs = [
            {"name": n, "dtype": str(t.dtype), "dims": self.static_dims(n, t) if dynamic else list(t.shape)}
            for n, t in zip(names, tensors, strict=True)
        ]
        versions = {"torch": torch.__version__, "onnx": onnx.__version__, "ort": self.ort_version}
        blob = json.dumps(
            {"op": op, "static": static, "inputs": inputs, **versions, "format": 2}, sort_keys=True, default=str
        )
        return f"{op}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"

    @staticmethod
    def dynamic_axes(name: str, t: torch.Tensor) -> list[int]:
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

    def static_dims(self, name: str, t: torch.Tensor) -> list[int | None]:
        dyn = self.dynamic_axes(name, t)
        return [None if i in dyn else s for i, s in enumerate(t.shape)]

    def export(
        self,
        module: torch.nn.Module,
        op: str,
        static: dict[str, Any],
        tensors: list[torch.Tensor],
        names: tuple[str, ...],
        path: Path,
        dynamic: bool,
    ) -> None:
        """Export `module` (called with `tensors`) to `path`, batch and sequence dims dynamic or all static."""
        from torch.export import Dim

        shapes = None
        if dynamic:
            axes = (self.dynamic_axes(n, t) for n, t in zip(names, tensors, strict=True))
            specs = tuple({i: Dim.AUTO for i in a} or None for a in axes)
            # OpModule / ExportableMoe take the tensors positionally; the whole-model modules take input_ids
            # (and the cache, flattened).
            if op == "causal_lm":
                shapes = {"input_ids": specs[0], "past": specs[1:]} if len(specs) > 1 else {"input_ids": specs[0]}
            else:
                shapes = {"tensors": specs}
        graph = f"{op} {static['mode']}" if op == "causal_lm" else op
        dtype = static.get("dtype") or next((str(t.dtype) for t in tensors if t.is_floating_point()), "")
        dtype = str(dtype).removeprefix("torch.")
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
        self.export_s += time.perf_counter() - started

    def valid(self, path: Path) -> bool:
        import onnx

        try:
            onnx.checker.check_model(str(path), full_check=False)
        except Exception as exc:
            log.warning("cached ONNX model %s is corrupt (%s: %s); re-exporting", path, type(exc).__name__, exc)
            return False
        return True

    def with_weights(self, path: Path, weights: Weights) -> bytes:
        """The cached graph with the model's own tensors as its initializers of the same names (serialized).

        The exporter keeps parameters and buffers as named initializers, but may fold a tensor into a constant
        (or drop an unused one). Sharing is refused (NotShareableError) unless every model tensor that is not
        an initializer has the value it had when the graph was exported (recorded beside the graph), and no other
        initializer looks like a copy of a model tensor. (Session-level initializer overrides are not used: ORT
        constant-folds the file's own values before it applies them.)"""
        import onnx
        from onnx import numpy_helper

        if path.stat().st_size > SHARE_LIMIT_BYTES:
            raise NotShareableError(f"{path.name} is too large to rewrite in memory")
        tensors = {n: t.detach().to("cpu").contiguous() for n, t in weights.tensors().items()}
        model = onnx.load(str(path))
        graph = {i.name: tuple(i.dims) for i in model.graph.initializer}
        elsewhere = digests({n: t for n, t in tensors.items() if graph.get(n) != tuple(t.shape)})
        sidecar = path.with_suffix(".outside.json")
        if not sidecar.is_file():
            sidecar.write_text(json.dumps(elsewhere))  # the first weights this graph meets are its own
        changed = sorted(n for n, d in elsewhere.items() if json.loads(sidecar.read_text()).get(n) != d)
        shapes = {tuple(t.shape) for t in tensors.values() if t.dim() >= 2}
        shapes |= {s[::-1] for s in shapes}
        copies = [n for n, dims in graph.items() if n not in tensors and dims in shapes]
        if changed or copies:
            raise NotShareableError(
                f"{path.name} cannot take these weights by name: {len(changed)} tensors outside its initializers "
                f"differ from the exported ones (e.g. {changed[:2]}), {len(copies)} initializers look like folded "
                "copies"
            )
        for init in model.graph.initializer:
            if init.name in tensors:
                init.CopyFrom(numpy_helper.from_array(tensors[init.name].numpy(), init.name))
        return model.SerializeToString()


class OpModule(torch.nn.Module):
    """Wraps one contract op of the torch-cpu implementation with its static keyword arguments."""

    def __init__(self, op: str, static: dict[str, Any], tensor_kwargs: tuple[str, ...]) -> None:
        super().__init__()
        from harness.backends.torch_cpu import TorchCpu

        self.impl = getattr(TorchCpu(), op)
        self.static = static
        self.tensor_kwargs = tensor_kwargs

    def forward(self, *tensors: torch.Tensor) -> Any:
        n = len(tensors) - len(self.tensor_kwargs)
        kwargs = dict(zip(self.tensor_kwargs, tensors[n:], strict=True))
        out = self.impl(*tensors[:n], **kwargs, **self.static)
        return out.tensors() if isinstance(out, TensorGroup) else out  # a Routing leaves the graph as its tensors


class ExportableMoe(torch.nn.Module):
    """The MoE layer in a form torch.export can trace: routing by harness.ops.route_scores (torch-cpu's
    rule), then every expert over every token with the combine weights scattered densely (zero where a token
    is not routed). Same function as torch-cpu's grouped path, without its data-dependent expert loop."""

    def __init__(self, spec: RoutingSpec, optional: tuple[str, ...]) -> None:
        super().__init__()
        self.spec, self.optional = spec, optional  # optional: the input names of the tensors after the first five

    def forward(self, *tensors: torch.Tensor) -> Any:
        """tensors: x, router_w, w_gate, w_up, w_down, then the optional ones named by `optional`. Returns out,
        plus the routing's weights and ids unless a routing is given."""
        x, router_w, w_gate, w_up, w_down = tensors[:5]
        kwargs = moe_kwargs(dict(zip(self.optional, tensors[5:], strict=True)))
        bias, shared, routing = kwargs.get("bias"), kwargs.get("shared"), kwargs.get("routing")
        chosen = (
            routing
            if routing is not None
            else ops.route_scores((x @ router_w.T).float(), self.spec, bias=None if bias is None else bias.float())
        )
        E = w_gate.shape[0]
        dense = torch.zeros(x.shape[0], E, dtype=torch.float32).scatter_add(1, chosen.ids, chosen.weights.float())
        xe = x.expand(E, *x.shape)  # [E, T, H]: every expert over every token, one batched GEMM per projection
        hidden = torch.nn.functional.silu(xe @ w_gate.transpose(1, 2)) * (xe @ w_up.transpose(1, 2))  # [E, T, F]
        y = hidden @ w_down.transpose(1, 2)  # [E, T, H]
        out = (dense.T[:, :, None] * y.float()).sum(dim=0)  # [T, H] in float32
        if shared is not None:
            out = out + shared.apply(x).float()
        out = out.to(x.dtype)
        return out if routing is not None else (out, chosen.weights, chosen.ids)


class NotShareableError(Exception):
    """An exported graph whose initializers are not the model's own tensors by name (an exporter folded one)."""


@dataclass(frozen=True)
class Weights:
    """A model's tensors as a session's initializers, by the names the exporter gives them."""

    fingerprint: str
    module: torch.nn.Module

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}


def architecture(config: Any) -> str:
    """What shapes an LLM graph (the config), not its weights."""
    return hashlib.sha256(config.to_json_string().encode()).hexdigest()[:16]


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """A digest of each tensor's bytes."""
    return {n: hashlib.sha256(_bytes(t)).hexdigest()[:24] for n, t in tensors.items()}


def fingerprint(master: torch.nn.Module) -> str:
    """One digest of every tensor of a model (names, shapes and bytes): which weight set a session runs."""
    digest = hashlib.sha256()
    for name, t in sorted(master.state_dict().items()):
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(_bytes(t))
    return digest.hexdigest()[:16]


def cache_layers(cache: Any) -> list[Any]:
    """The per-layer key / value holders of a transformers DynamicCache (empty before the first step)."""
    return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "keys", None) is not None]


class LlmGraph(torch.nn.Module):
    """The bound model as an exportable function: logits plus every layer's keys and values (prefill: no cache
    in; decode: the cache in, flattened as k_0, v_0, k_1, v_1, ...). One graph per mode, model and dtype."""

    def __init__(self, bound: torch.nn.Module, mode: str) -> None:
        super().__init__()
        self.bound, self.mode = bound, mode

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> Any:
        from harness.models.llm_bind import forward, new_cache

        cache = new_cache(self.bound)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        logits = forward(self.bound, input_ids, cache)
        return (logits, *[t for layer in cache_layers(cache) for t in (layer.keys, layer.values)])


def export_ops() -> Any:
    from harness.backends.torch_cpu import TorchCpu

    class ExportOps(TorchCpu):
        """torch-cpu's ops with MoE in the export-friendly dense form (the grouped loop is data-dependent)."""

        name: ClassVar[str] = "ort-export"

        def moe_layer(self, args: MoeArgs) -> tuple[torch.Tensor, Routing]:
            named = moe_inputs(args.bias, args.shared, args.routing)
            layer = ExportableMoe(args.spec, tuple(named))
            result = layer(args.x, args.router_w, *args.experts.tensors(), *named.values())
            if args.routing is not None:
                return result, args.routing
            return result[0], Routing(*result[1:])

    return ExportOps()
