"""KV-cache decode of an LLM workload, the reference's self-check, and the teacher-forced decode judgement.

Decode can go wrong in ways prefill never shows (a cache that is not used, positions off by one, a cache laid
out wrongly), and it can go wrong in the harness itself: when transformers renamed the cache keyword, the bound
attention silently decoded without a cache, and the reference and every backend agreed on the wrong answer. So:

1. The reference decodes greedily through its KV cache, and its cached decode logits must equal its own full
   forward over the same tokens (float64, rel_l2 <= SELF_CHECK_REL_L2). If not, the harness's decode path is
   broken and every case of the group is an error, never a pass.
2. Each backend decodes teacher-forced: after its own prefill of the prompt it is fed the reference's tokens, and
   its logits at every step are judged against the reference's (median-position rel_l2 and mean KL, as prefill).
   Greedy agreement falls out of the same run: the backend's own choice agrees with the reference's up to the
   first step where its argmax differs, exactly as far as a free-running greedy decode would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.lazy import nn, torch
from harness.models.llm_bind import LlmModel, forward, new_cache
from harness.workload import VariantInputs

SELF_CHECK_REL_L2 = 1e-9  # float64 cached vs full forward: rounding differences only (seen: ~1e-15)

Step = Callable[["torch.Tensor", Any], "torch.Tensor"]  # (input_ids [B, S], cache) -> logits [B, S, V] on host


class DecodeSelfCheckError(RuntimeError):
    """The reference's KV-cache decode disagrees with its own full forward: the harness's decode path is broken."""


@dataclass(frozen=True)
class DecodeTrace:
    """One KV-cache decode after a prompt: the tokens fed at each step, the argmax after the prompt and after
    each step, and each step's logits (host tensors)."""

    fed: torch.Tensor  # [B, N] token fed at decode step j
    chosen: torch.Tensor  # [B, N + 1] argmax after the prompt, then after each step
    logits: torch.Tensor  # [B, N, V] logits of each decode step


def decode(
    step: Step, cache: Any, prompt: torch.Tensor, steps: int, teacher: torch.Tensor | None = None
) -> DecodeTrace:
    """Prefill `prompt` [B, P] into `cache`, then `steps` one-token steps: each feeds the previous argmax
    (free-running greedy) or, with `teacher` [B, steps], the teacher's token."""
    chosen = [step(prompt, cache)[:, -1].argmax(dim=-1)]  # [B]
    fed, logits = [], []
    for j in range(steps):
        token = chosen[-1] if teacher is None else teacher[:, j].to(chosen[-1].device)  # [B]
        out = step(token[:, None], cache)[:, -1]  # [B, V]
        fed.append(token)
        logits.append(out)
        chosen.append(out.argmax(dim=-1))
    return DecodeTrace(torch.stack(fed, dim=1), torch.stack(chosen, dim=1), torch.stack(logits, dim=1))


@dataclass(frozen=True)
class ReferenceDecode:
    """The reference's greedy decode and how far its cached logits are from its own full forward."""

    trace: DecodeTrace
    self_check_rel_l2: float

    @property
    def ok(self) -> bool:
        return self.self_check_rel_l2 <= SELF_CHECK_REL_L2  # NaN fails too

    def problem(self) -> str:
        import transformers

        return (
            "the harness's decode path is broken: the reference's KV-cache decode logits differ from its own full "
            f"forward over the same tokens (rel_l2 {self.self_check_rel_l2:.3g} > {SELF_CHECK_REL_L2:g}, float64), "
            f"so the cache does not reach the bound attention (transformers {transformers.__version__}); "
            "no decode verdict can be trusted"
        )


def reference_decode(model: LlmModel, prompt: torch.Tensor, steps: int) -> ReferenceDecode:
    """Greedy decode of the float64 reference, self-checked against its own full forward (once per master)."""
    prompt = prompt.to("cpu")
    key = ("decode", tuple(prompt.shape), tuple(prompt.flatten().tolist()), steps)
    return model.cached(key, lambda: _reference_decode(model.reference(), prompt, steps))


def _reference_decode(ref: nn.Module, prompt: torch.Tensor, steps: int) -> ReferenceDecode:
    trace = decode(lambda ids, cache: forward(ref, ids, cache), new_cache(ref), prompt, steps)
    full = forward(ref, torch.cat([prompt, trace.fed], dim=1))  # [B, P + N, V]
    at_steps = full[:, prompt.shape[1] :]  # the positions the decode steps fed: [B, N, V]
    diff = float((trace.logits - at_steps).norm())
    norm = float(at_steps.norm())
    return ReferenceDecode(trace, diff / norm if norm > 0 else float("nan"))


def decode_inputs(device_call: Callable[..., Any], cache: Any, host: Mapping[str, Any]) -> VariantInputs:
    """The decode timing's input set: `cache` holding the prompt `host["input_ids"]` [B, P] (prefilled with
    `device_call`, the op on the device) and the step token [B, 1] (the prefill's argmax). Each call is one token
    through the cache, cropped back to the prompt first, so every timed step sees the same cache length. What a
    step reads (the token and the prompt's keys and values in every layer) is checksummed across the timed
    region; `load` refills the same cache object and token tensor with another prompt."""
    length = host["input_ids"].shape[1]
    step: list[torch.Tensor] = []

    def load(other: Mapping[str, Any]) -> None:
        cache.reset()  # the same layer objects, emptied: a prefill of the new prompt refills them
        logits = device_call(input_ids=other["input_ids"], cache=cache)  # [B, P, V]
        token = logits[:, -1].argmax(dim=-1)[:, None]  # [B, 1]
        if step:
            step[0].copy_(token)
        else:
            step.append(token)

    def call() -> Any:
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)
        return device_call(input_ids=step[0], cache=cache)  # [B, 1, V]

    def tensors() -> dict[str, Any]:
        found: dict[str, Any] = {"decode input_ids": step[0]}
        for i, layer in enumerate(getattr(cache, "layers", [])):
            for kind in ("keys", "values"):
                t = getattr(layer, kind, None)
                if isinstance(t, torch.Tensor):
                    found[f"KV cache layer {i} {kind}"] = t[..., :length, :]  # the prompt's part: [B, H, P, D]
        return found

    load(host)
    return VariantInputs(call, tensors, load)
