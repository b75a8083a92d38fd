"""Parity of MoE routing decisions: a backend's chosen experts and weights against the reference's, token by
token, where a disagreement is forgiven only when a near-tie of the reference's own logits explains it (a logit
gap under a few unit roundoffs, or a group ranking that close), and the agreeing tokens' combine weights are held
to the tensor budget (harness.parity)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from harness import ops
from harness.lazy import torch
from harness.op_types import Routing, RoutingSpec
from harness.parity import UNIT_ROUNDOFF, Budget, Failure, Metrics, compare

NEAR_TIE_FACTOR = 4.0  # gap under 4 unit roundoffs of the largest logit: two logits each rounded once, 2x margin
SIGMOID_MAX_SLOPE = 0.25  # sigmoid'(x) <= 1/4: a logit error moves a sigmoid score by at most a quarter of it


@dataclass(frozen=True)
class RoutingReport:
    """How a backend's routing decision compares with the reference's, token by token."""

    tokens: int
    agreement: float  # fraction of tokens whose top-k expert SET matches exactly
    disagreements: int
    near_ties: int  # tokens whose reference top-k (or group) boundary gap is under the dtype's tolerance
    explained: int  # disagreements on near-tie tokens: reported, not failed
    unexplained: int  # disagreements no near-tie explains: a routing bug
    unexplained_tokens: list[int]
    weights_rel_l2: float  # combine weights of the agreeing tokens against the reference's
    tie_tolerance: float  # median per-token tolerance, in logits

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def routing_near_ties(
    logits: torch.Tensor,
    dtype: str,
    spec: RoutingSpec,
    *,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (near-tie bool [T], tolerance in logits [T]) from the reference's float64 logits.

    The gap is measured where selection ranks: logits for softmax (monotone), biased sigmoid scores for
    sigmoid_group_topk, plus the gap between the last kept group and the next one.
    """
    l64 = logits.detach().to("cpu", torch.float64)  # [T, E]
    tol = NEAR_TIE_FACTOR * UNIT_ROUNDOFF[dtype] * l64.abs().amax(dim=-1).clamp(min=1.0)  # [T]
    if spec.scheme == "softmax_topk":
        choice, group_scores, choice_tol = l64, None, tol
    else:
        b64 = None if bias is None else bias.detach().to("cpu", torch.float64)
        _, choice, group_scores = ops.selection_scores(l64, spec, bias=b64)
        choice_tol = SIGMOID_MAX_SLOPE * tol

    def boundary_gap(values: torch.Tensor, k: int) -> torch.Tensor:
        if k >= values.shape[-1]:
            return torch.full(values.shape[:1], math.inf, dtype=torch.float64)
        ranked = values.sort(dim=-1, descending=True).values  # [T, n]
        gap = ranked[:, k - 1] - ranked[:, k]
        return torch.where(torch.isfinite(ranked[:, k]), gap, torch.full_like(gap, math.inf))

    near = boundary_gap(choice, spec.top_k) < choice_tol
    if group_scores is not None:
        near |= boundary_gap(group_scores, spec.topk_group) < 2 * choice_tol  # a group score sums two choices
    return near, tol


def _by_expert(weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's k (weight, id) pairs ordered by expert id, so routings compare as sets."""
    ids_sorted, perm = ids.to(torch.long).sort(dim=-1)
    return weights.to(torch.float64).gather(1, perm), ids_sorted


def compare_routing(
    out: Routing,
    ref: Routing,
    near_ties: torch.Tensor,
    tolerance: torch.Tensor,
    budget: Budget,
) -> tuple[RoutingReport, torch.Tensor, Metrics | None, tuple[Failure, ...]]:
    """Routing agreement and near-ties: (report, agreement mask [T], metrics of the agreeing tokens' combine
    weights or None when no token agrees, failures: unexplained disagreements or a malformed routing)."""
    tokens = ref.ids.shape[0]
    if tuple(out.weights.shape) != tuple(ref.ids.shape) or tuple(out.ids.shape) != tuple(ref.ids.shape):
        detail = f"weights {list(out.weights.shape)} and ids {list(out.ids.shape)}; expected {list(ref.ids.shape)}"
        report = RoutingReport(tokens, 0.0, tokens, int(near_ties.sum()), 0, tokens, [], math.nan, 0.0)
        failure = Failure("routing_shape", 0.0, 0.0, detail=detail)
        return report, torch.zeros(tokens, dtype=torch.bool), None, (failure,)
    out_w, out_ids = _by_expert(out.weights, out.ids)
    ref_w, ref_ids = _by_expert(ref.weights, ref.ids)
    agree = (out_ids == ref_ids).all(dim=-1)  # [T]
    disagree = ~agree
    unexplained = disagree & ~near_ties
    weights = compare(out_w[agree], ref_w[agree], budget) if bool(agree.any()) else None
    report = RoutingReport(
        tokens=tokens,
        agreement=float(agree.double().mean()) if tokens else 1.0,
        disagreements=int(disagree.sum()),
        near_ties=int(near_ties.sum()),
        explained=int((disagree & near_ties).sum()),
        unexplained=int(unexplained.sum()),
        unexplained_tokens=unexplained.nonzero().flatten()[:8].tolist(),
        weights_rel_l2=weights.rel_l2 if weights is not None else math.nan,
        tie_tolerance=float(tolerance.median()) if tolerance.numel() else 0.0,
    )
    failures: tuple[Failure, ...] = ()
    if report.unexplained:
        detail = (
            f"{report.unexplained} of {tokens} tokens pick other experts with no near-tie at their top-k "
            f"boundary (tokens {report.unexplained_tokens})"
        )
        failures = (Failure("routing_unexplained", float(report.unexplained), 0.0, detail=detail),)
    return report, agree, weights, failures
