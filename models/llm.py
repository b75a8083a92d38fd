"""Small LLM workloads: real transformers architectures with seeded weights, run through a backend's own ops.

The model pieces live beside this file: llm_config (configs, seeded weights, checkpoints), llm_bind (a backend's
ops bound into a model copy; forward with a KV cache), llm_decode (decode, its self-check and teacher forcing) and
llm_layerwise (capture and replay for localization). A case is judged on its prefill logits, on teacher-forced
decode logits, and optionally layer by layer; greedy agreement and perplexity are reported.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness import ops, parity, parity_llm
from harness.lazy import nn, torch
from harness.models.invariance_parts import sequences
from harness.models.llm_bind import LlmModel, new_cache
from harness.models.llm_config import (
    ARCHS,
    MODEL_TYPES,
    build_config,
    causal_lm_class,
    config_model_type,
    load_checkpoint,
    prepare_config,
    seeded_model,
)
from harness.models.llm_decode import DecodeSelfCheckError, decode, decode_inputs, reference_decode
from harness.models.llm_layerwise import capture, replay
from harness.workload import (
    Call,
    CaseInputs,
    Evaluation,
    InvariancePart,
    Outputs,
    TimingVariant,
    VariantInputs,
    Workload,
    WorkloadError,
    WorkloadUnavailableError,
    evaluate_tensor,
    structural_failures,
)

SUMMARY: Mapping[str, str] = {
    "llama3": "Llama-3 architecture: dense, GQA, half-style rope",
    "qwen3": "Qwen3: dense, GQA, per-head QK RMSNorm",
    "qwen3-moe": "Qwen3-MoE: QK-norm attention, softmax top-k MoE (renormalized) through the backend's moe op",
    "mixtral": "Mixtral: GQA attention, softmax top-2 MoE through the backend's moe op",
    "deepseek-v3": "DeepSeek-V3: MLA (D != Dv, latent KV cache, interleaved rope), grouped sigmoid routing with a "
    "selection bias and a shared expert",
}


# ----- the workloads -----


@dataclass(frozen=True)
class LlmShape:
    arch: str
    size: str  # tiny | small | checkpoint
    batch: int
    seq: int
    new_tokens: int  # greedy decode length
    checkpoint: str | None = None  # a user's --model directory

    def describe(self) -> str:
        source = f"checkpoint {self.checkpoint}" if self.checkpoint else f"{self.arch} {self.size}"
        return f"{source} B{self.batch} S{self.seq} +{self.new_tokens} greedy"


def _linear_params(model: nn.Module) -> tuple[float, float]:
    """(parameters a token multiplies through, all parameters) of the decoder layers and the LM head."""
    active = total = 0.0
    config = model.config
    for name, p in model.named_parameters():
        if "embed_tokens" in name or p.dim() < 2:
            continue
        n = float(p.numel())
        total += n
        if ".experts." in name:
            experts = p.shape[0]
            n *= config.num_experts_per_tok / experts
        active += n
    return active, total


@functools.lru_cache(maxsize=32)
def _param_counts(shape: LlmShape) -> tuple[float, float]:
    """(active, total) parameters of the decoder and head, from a weightless (meta-device) build."""
    if shape.checkpoint:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(shape.checkpoint, local_files_only=True)
    else:
        config = build_config(shape.arch, shape.size)
    with torch.device("meta"):
        model = causal_lm_class(config)(prepare_config(config))
    return _linear_params(model)


MASTERS_KEPT = 2  # float64 models kept between case groups (a user's checkpoint can be large)


class LlmWorkload(Workload):
    """One architecture: judged on logits, greedy decode with a KV cache, perplexity; optionally layer-wise."""

    op: ClassVar[str] = "causal_lm"
    distributions: ClassVar[tuple[str, ...]] = ("normal",)
    has_layers: ClassVar[bool] = True

    def __init__(self, arch: str, presets: Mapping[str, Mapping[str, LlmShape]], description: str) -> None:
        super().__init__(f"llm.{arch}", presets, description)
        self.arch = arch
        self._masters: OrderedDict[tuple[LlmShape, int], tuple[nn.Module, dict[Any, Any]]] = OrderedDict()

    # -- inputs --
    def master(self, shape: LlmShape, seed: int) -> tuple[nn.Module, dict[Any, Any]]:
        """The float64 model of a shape and seed, with the reference results shared by its case dtypes (the
        last few are kept: a sweep runs every dtype of a model one after another)."""
        key = (shape, seed)
        if key not in self._masters:
            if shape.checkpoint:
                model = load_checkpoint(Path(shape.checkpoint))
            else:
                model = seeded_model(build_config(shape.arch, shape.size), seed)
            self._masters[key] = (model, {})
            while len(self._masters) > MASTERS_KEPT:
                self._masters.popitem(last=False)
        self._masters.move_to_end(key)
        return self._masters[key]

    def make_inputs(self, shape: LlmShape, dtype: torch.dtype, seed: int, distribution: str) -> dict[str, torch.Tensor]:
        try:
            import transformers  # noqa: F401
        except ImportError as exc:
            raise WorkloadUnavailableError(
                f"{self.name} needs transformers (pip install 'harness[llm]'): {exc}"
            ) from None
        master, _ = self.master(shape, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(0, master.config.vocab_size, (shape.batch, shape.seq), generator=gen)
        return {"input_ids": ids}

    def make_context(self, shape: LlmShape, dtype: torch.dtype, seed: int) -> LlmModel:
        """The model the op runs: the seeded (or checkpoint) float64 master at the case dtype."""
        master, shared = self.master(shape, seed)
        return LlmModel(master, dtype, self.name, shared)

    def op_arguments(
        self, inputs: Mapping[str, torch.Tensor], shape: LlmShape, context: Any = None
    ) -> tuple[list[Any], dict[str, Any]]:
        return [], {"model": context, "input_ids": inputs["input_ids"]}

    def op_kwargs(self, shape: LlmShape) -> dict[str, Any]:
        return {}

    def reference_output(
        self, inputs: Mapping[str, torch.Tensor], shape: LlmShape, context: Any = None
    ) -> torch.Tensor:
        return ops.causal_lm(context, inputs["input_ids"])

    def reduction_length(self, shape: LlmShape) -> int:
        return 64 if shape.size == "tiny" else 256

    def shape_from_inputs(self, tensors: Mapping[str, torch.Tensor], template: LlmShape) -> LlmShape:
        self.check_input_names(tensors)
        ids = tensors["input_ids"]
        if ids.dim() != 2 or ids.is_floating_point():
            raise WorkloadError(
                f"{self.name}: input input_ids: expected integer [B, S], got {ids.dtype} {list(ids.shape)}"
            )
        return LlmShape(
            template.arch, template.size, ids.shape[0], ids.shape[1], template.new_tokens, template.checkpoint
        )

    def checkpoint_shape(self, shape: LlmShape, path: str) -> LlmShape | None:
        """A --model directory of this workload's architecture (validated by loading it once)."""
        if self.checkpoint_type(path) not in self.checkpoint_types():
            return None
        load_checkpoint(Path(path))
        return dataclasses.replace(shape, size="checkpoint", checkpoint=str(path))

    def checkpoint_types(self) -> tuple[str, ...]:
        return tuple(t for t, arch in MODEL_TYPES.items() if arch == self.arch)

    def checkpoint_type(self, path: str) -> str | None:
        """config.json's model_type (transformers' name of the architecture)."""
        return config_model_type(Path(path))

    # -- work counts --
    def flops(self, shape: LlmShape) -> float:
        active, _ = _param_counts(shape)
        return 2.0 * shape.batch * shape.seq * active

    def bytes_moved(self, shape: LlmShape, itemsize: int) -> float:
        _, total = _param_counts(shape)
        return total * itemsize

    def tokens_per_call(self, shape: LlmShape) -> int | None:
        return shape.batch * shape.seq

    def timing_variants(self, device_call: Any, group: CaseInputs) -> dict[str, TimingVariant]:
        """Decode: one token per sequence through a KV cache holding the prompt (cropped back each call); its
        input sets (models/llm_decode.py decode_inputs) let the timing checks rotate over two prompts."""
        shape, model = group.shape, group.context

        def make(host: Mapping[str, Any]) -> VariantInputs:
            try:
                cache = new_cache(device_call(return_model=True))
            except NotImplementedError:  # a backend without a torch model (an exported graph) fills a cache too
                cache = new_cache(model.master)
            return decode_inputs(device_call, cache, host)

        first = make(group.tensors)
        active, total = _param_counts(shape)
        itemsize = model.dtype.itemsize
        flops, nbytes = 2.0 * shape.batch * active, total * itemsize
        return {"decode": TimingVariant(first.call, flops, nbytes, shape.batch, inputs=first, make_inputs=make)}

    # -- judgement --
    saved_outputs: ClassVar[tuple[str, ...]] = ("out", "decode.logits", "decode.chosen")

    def invariance_parts(self, group: CaseInputs) -> tuple[InvariancePart, ...]:
        return sequences(group.shape, group.tensors)

    def invariance_output(self, call: Call, group: CaseInputs) -> Any:
        return call()  # the prefill logits alone: decode is judged on the whole batch

    def collect(self, call: Call, group: CaseInputs) -> Outputs:
        """Prefill logits ("out"), then a teacher-forced decode from the first half of the stream: the backend
        is fed the reference's greedy tokens through its own KV cache; each step's logits and the backend's own
        greedy choice after the prompt and after each step. Raises DecodeSelfCheckError when the reference's
        own cached decode is not its full forward."""
        logits = call()
        if structural_failures(logits, group.reference(), group.dtype):
            return {"out": logits}  # judged malformed; no decode on a backend whose prefill is already wrong
        prompt, ref = self._reference_decode(group)
        trace = decode(
            lambda ids, cache: call(input_ids=ids, cache=cache),
            new_cache(group.context.master),
            prompt,
            group.shape.new_tokens,
            teacher=ref.trace.fed,
        )
        return {"out": logits, "decode.logits": trace.logits, "decode.chosen": trace.chosen}

    def judge_outputs(self, outputs: Mapping[str, Any], group: CaseInputs, budget: parity.Budget) -> Evaluation:
        """Prefill logits (metrics, median position error and mean KL), teacher-forced decode logits the same
        way, greedy agreement; the absolute verdicts use LLM_BUDGETS (`--against` re-judges the same checks)."""
        inputs, dtype = group.tensors, group.dtype
        out = evaluate_tensor(outputs["out"], group.reference(), dtype, budget)
        if out.metrics is None:
            return out
        llm = parity_llm.llm_metrics(out.output, group.reference(), inputs["input_ids"])
        checks = parity_llm.llm_checks(llm, parity_llm.LLM_BUDGETS[dtype])
        details: dict[str, Any] = {"llm": llm.to_record()}
        decode_checks, decode_details, malformed = self._judge_decode(outputs, group)
        checks += decode_checks
        details.update(decode_details)
        failures = malformed + parity.over(checks)
        return Evaluation(out.output, out.metrics, "logits.", failures, details, judge_primary=False, checks=checks)

    def evaluate(self, call: Call, group: CaseInputs, budget: parity.Budget) -> Evaluation:
        """The judged outputs, then (--layerwise) the first layer and op over its own budget."""
        evaluation = super().evaluate(call, group, budget)
        if not group.layerwise or evaluation.metrics is None:
            return evaluation
        details = dict(evaluation.details)
        try:
            bound = call(return_model=True)
        except NotImplementedError as exc:
            details["layerwise"] = {"unavailable": str(exc)}
            return dataclasses.replace(evaluation, details=details)
        loc = self.localize(bound, group)
        details["layerwise"] = loc.to_record()
        checks = evaluation.checks
        if loc.culprit is not None:
            c = loc.culprit
            checks += (parity.Check(f"layerwise.layer{c.layer}.{c.kind}", c.median_row_rel_l2, c.budget),)
        failures = evaluation.failures + parity.over(checks[len(evaluation.checks) :])
        return dataclasses.replace(evaluation, failures=failures, details=details, checks=checks)

    def _reference_decode(self, group: CaseInputs) -> tuple[torch.Tensor, Any]:
        """The decode prompt (the first half of the stream, [B, P]) and the reference's greedy decode from it."""
        prompt = group.tensors["input_ids"][:, : max(1, group.shape.seq // 2)]  # [B, P]
        ref = reference_decode(group.context, prompt, group.shape.new_tokens)
        if not ref.ok:
            raise DecodeSelfCheckError(ref.problem())
        return prompt, ref

    def _judge_decode(
        self, outputs: Mapping[str, Any], group: CaseInputs
    ) -> tuple[tuple[parity.Check, ...], dict[str, Any], tuple[parity.Failure, ...]]:
        """The teacher-forced decode's logits judged like prefill's, and greedy agreement: (checks, details,
        failures of a malformed decode output)."""
        prompt, ref = self._reference_decode(group)
        logits, chosen = outputs["decode.logits"], outputs["decode.chosen"]
        malformed = structural_failures(logits, ref.trace.logits, group.dtype, prefix="decode.")
        if malformed or tuple(chosen.shape) != tuple(ref.trace.chosen.shape):
            detail = f"greedy tokens {list(chosen.shape)} != {list(ref.trace.chosen.shape)}"
            return (), {}, malformed or (parity.Failure("decode.chosen", 0, 0, detail=detail),)
        metrics = parity_llm.llm_metrics(logits, ref.trace.logits, ref.trace.fed)
        checks = parity_llm.llm_checks(metrics, parity_llm.LLM_BUDGETS[group.dtype], prefix="decode.")
        steps = group.shape.new_tokens
        lengths = parity_llm.agreement_length(chosen[:, :steps], ref.trace.chosen[:, :steps])
        details = {
            "decode": {
                "steps": steps,
                "prompt": int(prompt.shape[1]),
                "teacher_forced": True,
                "self_check_rel_l2": ref.self_check_rel_l2,
                **metrics.to_record(),
            },
            "greedy": {"new_tokens": steps, "agreement_length": lengths, "min": min(lengths)},
        }
        return checks, details, ()

    def budget(self, dtype: str, shape: LlmShape, overrides: Mapping[str, float] | None = None) -> parity.Budget:
        """For --against ratios on the logits (absolute verdicts use LLM_BUDGETS): scaled to the LLM budget."""
        limit = parity_llm.LLM_BUDGETS[dtype].median_position_rel_l2
        base = parity.Budget(rel_l2=limit, worst_row_rel_l2=4 * limit, atol=limit, rtol=limit, max_outside=0.05)
        return dataclasses.replace(base, **dict(overrides or {}))

    def localize(self, bound: nn.Module, group: CaseInputs) -> parity_llm.Localization:
        """Propagated: each model on its own inputs, layer outputs compared. Teacher-forced: each of the
        backend's ops fed the reference's own inputs, its output compared with the reference's."""
        ids = group.tensors["input_ids"]
        model = group.context
        key = ("capture", tuple(ids.flatten().tolist()))
        _, ref_ops, ref_layers = model.cached(key, lambda: capture(model.reference(), ids))
        device = next(bound.parameters()).device
        dtype = model.dtype
        _, _, out_layers = capture(bound, ids.to(device))
        propagated = [parity_llm.median_row_rel_l2(o, r) for o, r in zip(out_layers, ref_layers, strict=True)]

        def to(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

        budget = parity.budget_for(group.dtype, self.reduction_length(group.shape))
        errors = [parity_llm.op_error(r.name, r.layer, r.kind, replay(bound, r, to), r.output, budget) for r in ref_ops]
        return parity_llm.localize(propagated, errors, budget.worst_row_rel_l2)


SIZES = {"tiny": dict(batch=2, seq=32, new_tokens=8), "small": dict(batch=4, seq=128, new_tokens=16)}


def workloads() -> list[Workload]:
    """The built-in LLM workloads (the `harness.workloads` entry point)."""
    return [
        LlmWorkload(
            arch,
            {size: {arch: LlmShape(arch, size, **dims)} for size, dims in SIZES.items()},
            SUMMARY[arch],
        )
        for arch in ARCHS
    ]
