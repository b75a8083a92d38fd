"""Workloads: what runs, with which shapes, dtypes and inputs, and how its outputs are judged.

A workload names one op of the kernel contract and a set of shape presets (`tiny` for CI, `small` for CPU
benchmarking, `real` for GPUs and NPUs); each preset holds one or more named shapes (a GQA and an MQA variant,
say). It generates seeded inputs on the host, already rounded to the case dtype, so the float64 reference sees
exactly what the backend saw. `Case` and the input helpers are harness/case.py, `Evaluation` and the values a
workload hands the executor harness/evaluation.py; both are re-exported here, the import path workloads use.
"""

from __future__ import annotations

import abc
import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness import ops, parity, quant_parity
from harness.case import (  # noqa: F401 - re-exported: workloads import these from harness.workload
    USER_SHAPE,
    Case,
    WorkloadError,
    WorkloadUnavailableError,
    generator,
    map_tensors,
    random_tensor,
)
from harness.dtypes import is_quantized
from harness.evaluation import (  # noqa: F401 - re-exported: workloads import these from harness.workload
    Call,
    Evaluation,
    InvariancePart,
    Outputs,
    TimingVariant,
    VariantInputs,
    evaluate_tensor,
    structural_failures,
    with_outputs,
)
from harness.lazy import torch
from harness.names import DISTRIBUTIONS, OPS, did_you_mean, unknown_name
from harness.plugins import PluginError, entry_points

log = logging.getLogger(__name__)

WORKLOAD_GROUP = "harness.workloads"


@dataclass
class CaseInputs:
    """The inputs shared by the cases of one input key; references computed on first use, once per group."""

    workload: Workload
    shape: Any
    dtype: str
    tensors: dict[str, torch.Tensor]  # host tensors named as in the kernel contract (Case.inputs: their distribution)
    problem: str | None = None  # e.g. non-finite inputs: every case of the group becomes an error record
    layerwise: bool = False  # workloads that can: also localize the first layer and op over budget
    memo: dict[str, Any] = field(default_factory=dict)
    context: Any = None  # what the workload's op takes besides tensors (a built model), from make_context

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def reference(self) -> torch.Tensor:
        """The float64 reference of the primary output (what `--against` and saved outputs compare)."""
        return self.cached("reference", lambda: self.workload.reference_output(self.tensors, self.shape, self.context))


class Workload(abc.ABC):
    """A named op invocation with shape presets. Subclasses implement the abstract methods for their shape type."""

    name: str
    op: ClassVar[str]
    description: str = ""
    # Inputs that stay float32 whatever the case dtype (a router's correction bias is float32 in real models).
    float32_inputs: ClassVar[tuple[str, ...]] = ()
    # The input distributions that mean something for this workload (token ids have no "stress" variant).
    distributions: ClassVar[tuple[str, ...]] = DISTRIBUTIONS
    # Whether it has layers to localize an error in (--layerwise); the core asks this, never the name.
    has_layers: ClassVar[bool] = False
    # Run by every rank of a torchrun job together (a distributed workload's collectives), not sharded: each rank
    # gets its cases, rank 0 writes the record (harness/shard.py). Single-process runs ignore it.
    collective: ClassVar[bool] = False
    # The outputs `judge_outputs` needs from a saved run (--against DIR): what `collect` names them.
    saved_outputs: ClassVar[tuple[str, ...]] = ("out",)
    # The quantized formats (harness.names.QUANT_FORMATS) this workload has a form in; only those are planned.
    quant_formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, presets: Mapping[str, Mapping[str, Any]], description: str = "") -> None:
        if self.op not in OPS:
            raise WorkloadError(f"workload {name!r}: op {self.op!r} is not one of: {', '.join(OPS)}")
        self.name = name
        self.presets = {p: dict(shapes) for p, shapes in presets.items()}
        self.description = description

    def shapes(self, preset: str) -> dict[str, Any]:
        try:
            return self.presets[preset]
        except KeyError:
            raise WorkloadError(
                f"workload {self.name!r} has no preset {preset!r}; presets: {', '.join(self.presets)}"
                + did_you_mean(preset, self.presets)
            ) from None

    def shape(self, preset: str, shape: str) -> Any:
        shapes = self.shapes(preset)
        if shape not in shapes:
            raise WorkloadError(
                f"workload {self.name!r} preset {preset!r} has no shape {shape!r}; shapes: {', '.join(shapes)}"
                + did_you_mean(shape, shapes)
            )
        return shapes[shape]

    @abc.abstractmethod
    def make_inputs(self, shape: Any, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, torch.Tensor]:
        """Host tensors named as in the kernel contract, float ones already in `dtype`."""

    @abc.abstractmethod
    def op_kwargs(self, shape: Any) -> dict[str, Any]:
        """The op's non-tensor keyword arguments for this shape (causal, window, scale...)."""

    @abc.abstractmethod
    def flops(self, shape: Any) -> float:
        """Useful floating-point operations of one call (masked-out work not counted)."""

    @abc.abstractmethod
    def bytes_moved(self, shape: Any, itemsize: int) -> float:
        """Bytes one call must read and write at the least."""

    @abc.abstractmethod
    def reduction_length(self, shape: Any) -> int:
        """The longest sum in the op: error budgets grow with it."""

    @abc.abstractmethod
    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: Any) -> Any:
        """Shape of the user's tensors (--inputs), taking non-tensor settings from `template`.

        Raises WorkloadError naming the tensor, the expected and the actual shape when they do not fit.
        """

    def budget(self, dtype: str, shape: Any, overrides: Mapping[str, float] | None = None) -> parity.Budget:
        """The parity budget of a case: the dtype's default at this reduction length, then any overrides.

        A workload whose op is known to need more (or allow less) overrides this; users override per run.
        """
        return parity.budget_for(dtype, self.reduction_length(shape), dict(overrides or {}))

    def check_input_names(self, tensors: Mapping[str, torch.Tensor]) -> None:
        spec = OPS[self.op]
        missing = [n for n in spec.inputs if n not in tensors]
        unknown = [n for n in tensors if n not in spec.inputs + spec.optional_inputs]
        if missing or unknown:
            accepted = ", ".join(spec.inputs) + (
                f" (optional: {', '.join(spec.optional_inputs)})" if spec.optional_inputs else ""
            )
            problems = []
            if missing:
                problems.append(f"missing {', '.join(missing)}")
            if unknown:
                problems.append(f"unknown {', '.join(unknown)}")
            raise WorkloadError(f"inputs for op {self.op!r} ({self.name}): {'; '.join(problems)}; accepted: {accepted}")

    def check_user_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """What every op's tensors must be, before any shape is worked out from them (--inputs): the contract's
        names, the rank of their layout, integer or floating as the contract says, and no empty dimension (a
        zero-size batch or sequence has nothing to judge, and breaks reductions deep inside the reference)."""
        self.check_input_names(tensors)
        spec = OPS[self.op]
        for name in (n for n in spec.inputs + spec.optional_inputs if n in tensors):  # in the contract's order
            t = tensors[name]
            layout = spec.layouts.get(name)
            dims = layout.split(",") if layout else [f"dim {i}" for i in range(t.dim())]
            shown = f"[{layout}]" if layout else ""
            if layout and t.dim() != len(dims):
                raise WorkloadError(
                    f"{self.name}: input {name}: expected {len(dims)} dims {shown}, got shape {list(t.shape)}"
                )
            if t.dim() == 0:
                raise WorkloadError(f"{self.name}: input {name}: expected a tensor with dimensions, got a scalar")
            empty = [d for d, size in zip(dims, t.shape, strict=True) if size == 0]
            if empty:
                raise WorkloadError(
                    f"{self.name}: input {name} {shown or list(t.shape)}: dimension {empty[0]} is 0 (shape "
                    f"{list(t.shape)}); every dimension must be >= 1"
                )
            integer = name in spec.integer_inputs
            if integer != (not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool):
                kind = "an integer dtype" if integer else "a floating dtype"
                raise WorkloadError(f"{self.name}: input {name}: expected {kind}, got {t.dtype}")

    def split_args(self, inputs: Mapping[str, torch.Tensor], shape: Any) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Positional tensors and keyword arguments of the op call, from named inputs."""
        spec = OPS[self.op]
        args = [inputs[n] for n in spec.inputs]
        kwargs = {n: inputs[n] for n in spec.optional_inputs if n in inputs}
        kwargs.update(self.op_kwargs(shape))
        return args, kwargs

    def for_dtype(self, shape: Any, dtype: str) -> Any:
        """The shape a case of this dtype runs (a quantized format's workload puts its QuantSpec in the shape,
        so the op and the reference both receive it); the default: the shape itself."""
        return shape

    def make_context(self, shape: Any, dtype: torch.dtype, seed: int) -> Any:
        """What the op takes besides tensors, built once per input group and passed as is (never moved or
        copied by the runner): a model workload's built model. None (the default): the op takes only tensors."""
        return None

    def op_arguments(
        self, inputs: Mapping[str, torch.Tensor], shape: Any, context: Any = None
    ) -> tuple[list[Any], dict[str, Any]]:
        """The op call's arguments from its tensors (host or device) and the group's context; a workload with
        a context overrides this, the default is `split_args`."""
        return self.split_args(inputs, shape)

    def reference_output(self, inputs: Mapping[str, torch.Tensor], shape: Any, context: Any = None) -> torch.Tensor:
        """The float64 reference of a group's inputs and context; the default is `reference`."""
        return self.reference(inputs, shape)

    def reference(self, inputs: Mapping[str, torch.Tensor], shape: Any) -> torch.Tensor:
        """The float64 oracle's output for these exact inputs."""
        args, kwargs = self.split_args(inputs, shape)
        return getattr(ops, self.op)(*args, **kwargs)

    def collect(self, call: Call, group: CaseInputs) -> Outputs:
        """Call the backend as many times as judging needs, and name what it returned ("out" the primary).
        The default: one call, one output tensor; workloads with richer outputs (MoE routing, LLM decode
        steps) override this and `judge_outputs` together."""
        return {"out": call()}

    def judge_outputs(self, outputs: Mapping[str, Any], group: CaseInputs, budget: parity.Budget) -> Evaluation:
        """Judge collected outputs: a backend's of this run, or a source run's read back from --save-outputs
        (so a baseline from another machine is judged by the very same metrics)."""
        return evaluate_tensor(outputs["out"], group.reference(), group.dtype, budget)

    def evaluate(self, call: Call, group: CaseInputs, budget: parity.Budget) -> Evaluation:
        """Call the backend and judge its outputs; the evaluation keeps the output tensors for --save-outputs."""
        outputs = self.collect(call, group)
        evaluation = with_outputs(self.judge_outputs(outputs, group, budget), outputs)
        return quant_parity.with_format_error(evaluation, group) if is_quantized(group.dtype) else evaluation

    def checkpoint_shape(self, shape: Any, path: str) -> Any | None:
        """The shape to run a user's checkpoint directory (--model) with, or None if this workload does not
        take that checkpoint. Raises WorkloadError naming the path when the directory cannot be loaded."""
        return None

    def checkpoint_types(self) -> tuple[str, ...]:
        """The kinds of checkpoint this workload takes (--model), as checkpoint_type names them; () for none."""
        return ()

    def checkpoint_type(self, path: str) -> str | None:
        """The kind of checkpoint in a --model directory, as this workload reads it (None: not one it reads).
        Raises WorkloadError naming the file when the directory cannot be read."""
        return None

    def tokens_per_call(self, shape: Any) -> int | None:
        """Tokens one timed call processes (LLM workloads report tokens/s); None where it means nothing."""
        return None

    def timing_variants(self, device_call: Call, group: CaseInputs) -> dict[str, TimingVariant]:
        """Further calls to time beside the main one; `device_call(**overrides)` runs the op on the device."""
        return {}

    def invariance_parts(self, group: CaseInputs) -> tuple[InvariancePart, ...]:
        """The parts of a case to run alone for --invariance; () (the default): not applicable."""
        return ()

    def invariance_output(self, call: Call, group: CaseInputs) -> Any:
        """The primary output of a part run alone, as `collect` names it "out"; a workload whose `collect`
        does more than the primary output needs (LLM decode) overrides this."""
        return self.collect(call, group).get("out")

    def cast_inputs(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Round the user's floating tensors to the case dtype (float32-only inputs to float32); ints stay."""
        return {
            n: (
                t.to(torch.float32 if n in self.float32_inputs else dtype)
                if isinstance(t, torch.Tensor) and t.is_floating_point()
                else t
            )
            for n, t in tensors.items()
        }


class WorkloadRegistry:
    """Name -> workload, fed by the `harness.workloads` entry points (each a callable returning workloads)."""

    def __init__(self, workloads: Iterable[Workload] = ()) -> None:
        self._workloads: dict[str, Workload] = {}
        self._origins: dict[str, str] = {}
        for w in workloads:
            self.register(w, "direct")

    def register(self, workload: Workload, origin: str) -> None:
        if workload.name in self._workloads:
            raise WorkloadError(
                f"workload name {workload.name!r} is registered twice: "
                f"by {self._origins[workload.name]} and by {origin}"
            )
        self._workloads[workload.name] = workload
        self._origins[workload.name] = origin

    @classmethod
    def discover(cls) -> WorkloadRegistry:
        registry = cls()
        for ref in entry_points(WORKLOAD_GROUP):
            provider = ref.load()
            try:
                items = provider() if callable(provider) else provider
                for w in items if isinstance(items, Iterable) else [items]:
                    registry.register(w, ref.origin)
            except WorkloadError:
                raise
            except Exception as exc:
                raise PluginError(f"{ref.origin}: building workloads failed: {type(exc).__name__}: {exc}") from exc
        return registry

    def names(self) -> list[str]:
        return sorted(self._workloads)

    def get(self, name: str) -> Workload:
        try:
            return self._workloads[name]
        except KeyError:
            raise WorkloadError(unknown_name("workload", name, self.names())) from None

    def select(self, patterns: Iterable[str]) -> list[Workload]:
        """Workloads matching any of the glob patterns, in name order; a pattern matching nothing is an error."""
        chosen: dict[str, Workload] = {}
        for pattern in patterns:
            hits = [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise WorkloadError(
                    f"no workload matches {pattern!r}; known workloads: {', '.join(self.names())}"
                    + did_you_mean(pattern, self.names())
                )
            for n in hits:
                chosen[n] = self._workloads[n]
        return [chosen[n] for n in sorted(chosen)]
