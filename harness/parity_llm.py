"""Parity of whole models: logits-level metrics and budgets (prefill and teacher-forced decode), greedy
agreement, and layer-wise localization of the first op whose own error exceeds its budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.lazy import torch
from harness.parity import Budget, Check


@dataclass(frozen=True)
class LlmBudget:
    """Whole-model budgets. Error accumulates over layers, and in MoE models a token whose routing flips on a
    near-tie gets very different logits (legitimately): so the judged statistics are the MEDIAN position's
    logits error and the MEAN KL, which a systematic fault moves and an isolated flip does not."""

    median_position_rel_l2: float
    kl_mean: float


LLM_BUDGETS: dict[str, LlmBudget] = {
    "float64": LlmBudget(1e-10, 1e-18),
    "float32": LlmBudget(1e-5, 1e-8),  # measured (tiny presets, torch-cpu): ~5e-7 and ~3e-12
    # bfloat16, measured: median ~0.01-0.025; KL up to 0.24 on the 6-layer DeepSeek-V3 `small` preset, for the
    # float64 oracle rounded to bfloat16 as much as for torch-cpu (confident heads amplify rounding; no op is
    # over its own budget there), so the KL budget is loose and the median position error carries the verdict.
    "bfloat16": LlmBudget(0.05, 0.5),
    "float16": LlmBudget(0.01, 0.05),  # measured: median ~0.0013, KL up to 1e-3 with a routing flip
}


@dataclass(frozen=True)
class LlmMetrics:
    positions: int
    logits_rel_l2: float
    median_position_rel_l2: float
    worst_position_rel_l2: float
    top1_agreement: float
    top5_overlap: float
    kl_mean: float  # KL(ref || out) per position, nats
    kl_max: float
    ppl_ref: float  # perplexity of the input stream's next tokens
    ppl_out: float
    ppl_delta_rel: float

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def llm_metrics(out_logits: torch.Tensor, ref_logits: torch.Tensor, input_ids: torch.Tensor) -> LlmMetrics:
    """Logit-level agreement of a model run with the reference run on the same token stream [B, S]."""
    out = out_logits.detach().to("cpu", torch.float64)  # [B, S, V]
    ref = ref_logits.detach().to("cpu", torch.float64)
    lo, lr = out.log_softmax(dim=-1), ref.log_softmax(dim=-1)
    kl = (lr.exp() * (lr - lo)).sum(dim=-1)  # [B, S]
    top5_out, top5_ref = out.topk(5, dim=-1).indices, ref.topk(5, dim=-1).indices  # [B, S, 5]
    overlap = (top5_out[..., :, None] == top5_ref[..., None, :]).any(dim=-1).double().mean(dim=-1)  # [B, S]
    targets = input_ids[:, 1:].to("cpu")  # next tokens
    nll_ref = -lr[:, :-1].gather(-1, targets[..., None]).mean()
    nll_out = -lo[:, :-1].gather(-1, targets[..., None]).mean()
    diff = (out - ref).norm(dim=-1)  # [B, S]
    norm = ref.norm(dim=-1).clamp(min=1e-300)
    ppl_ref, ppl_out = float(nll_ref.exp()), float(nll_out.exp())
    return LlmMetrics(
        positions=int(kl.numel()),
        logits_rel_l2=float((out - ref).norm() / ref.norm()),
        median_position_rel_l2=float((diff / norm).median()),
        worst_position_rel_l2=float((diff / norm).max()),
        top1_agreement=float((out.argmax(-1) == ref.argmax(-1)).double().mean()),
        top5_overlap=float(overlap.mean()),
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        ppl_ref=ppl_ref,
        ppl_out=ppl_out,
        ppl_delta_rel=(ppl_out - ppl_ref) / ppl_ref,
    )


def llm_checks(m: LlmMetrics, budget: LlmBudget, prefix: str = "llm.") -> tuple[Check, ...]:
    """The judged statistics of a model run's logits (prefill: `llm.`; teacher-forced decode steps: `decode.`)."""
    return (
        Check(f"{prefix}median_position_rel_l2", m.median_position_rel_l2, budget.median_position_rel_l2),
        Check(f"{prefix}kl_mean", m.kl_mean, budget.kl_mean),
    )


def agreement_length(out_tokens: torch.Tensor, ref_tokens: torch.Tensor) -> list[int]:
    """Per sequence, how many greedy tokens match the reference's before the first difference."""
    same = (out_tokens.to("cpu") == ref_tokens.to("cpu")).long()  # [B, N]
    return same.cumprod(dim=-1).sum(dim=-1).tolist()


# ----- layer-wise localization -----


@dataclass(frozen=True)
class OpError:
    """One op's own error: its output against the reference's, fed the reference's own input."""

    name: str
    layer: int
    kind: str
    rel_l2: float
    median_row_rel_l2: float
    budget: float
    over: bool


def median_row_rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The median over rows (tokens) of each row's relative error: robust to a MoE token that flips experts
    on a near-tie, while a wrong weight, rope or mask moves nearly every row."""
    o = out.detach().to("cpu", torch.float64).reshape(-1, out.shape[-1])
    r = ref.detach().to("cpu", torch.float64).reshape(-1, ref.shape[-1])
    rows = (o - r).norm(dim=-1) / r.norm(dim=-1).clamp(min=1e-300)
    return float(rows.median()) if rows.numel() else 0.0


def op_error(name: str, layer: int, kind: str, out: torch.Tensor, ref: torch.Tensor, budget: Budget) -> OpError:
    """An op's own error, judged on its median row error (see median_row_rel_l2)."""
    o = out.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    median = median_row_rel_l2(o, r)
    finite = bool(torch.isfinite(o).all())
    rel = float((o - r).norm() / r.norm().clamp(min=1e-300))
    limit = budget.worst_row_rel_l2
    return OpError(name, layer, kind, rel, median, limit, over=not finite or not median <= limit)


@dataclass(frozen=True)
class Localization:
    """Where a model run diverges: per-layer propagated error, and per-op teacher-forced error."""

    propagated: list[float]  # median row rel_l2 of each decoder layer's output, each model on its own inputs
    teacher_forced: list[OpError]
    culprit: OpError | None
    explanation: str

    def to_record(self) -> dict[str, Any]:
        return {
            "propagated": self.propagated,
            "teacher_forced": [asdict(e) for e in self.teacher_forced],
            "culprit": asdict(self.culprit) if self.culprit else None,
            "explanation": self.explanation,
        }


def localize(propagated: list[float], teacher_forced: list[OpError], propagated_budget: float) -> Localization:
    """Name the first layer and op whose OWN error (teacher-forced) exceeds its budget, and say why the later
    layers that look wrong in propagated mode are not the culprit."""
    culprit = next((e for e in teacher_forced if e.over), None)
    first_off = next((i for i, err in enumerate(propagated) if err > propagated_budget), None)
    if culprit is None:
        text = "no op exceeds its own budget when fed the reference's inputs"
        if first_off is not None:
            text += (
                f"; propagated error passes {propagated_budget:.3g} from layer {first_off} on, which is accumulated "
                "rounding, not a faulty op"
            )
    else:
        text = (
            f"layer {culprit.layer}, op {culprit.kind} ({culprit.name}): its own error is "
            f"{culprit.median_row_rel_l2:.3g} (median row rel_l2) against a budget of {culprit.budget:.3g}"
        )
        later = [i for i, err in enumerate(propagated) if i > culprit.layer and err > propagated_budget]
        others = [e for e in teacher_forced if e.over and e is not culprit]
        if others:
            text += "; also over budget on their own: " + ", ".join(f"layer {e.layer} {e.kind}" for e in others[:6])
        elif later:
            text += (
                f"; layers {later[0]}..{later[-1]} are also off in propagated mode only because they inherit "
                f"layer {culprit.layer}'s error: fed the reference's inputs, their own ops are within budget"
            )
    return Localization(propagated, teacher_forced, culprit, text)
