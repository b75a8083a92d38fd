"""The ranks of a torchrun job agree on a collective case's output.

Every rank computes a collective (dist.*) case's output (the all-gathered tensor), but only rank 0 judges and
records it, so a bug that corrupts another rank's copy alone would pass. After the case each rank sends a
fingerprint of its outputs (dtype, shape and a SHA-256 of the bytes: the same all-gathered tensor on every rank
is bitwise equal) over the run's gloo coordination group (harness/ranks.py); a rank whose case produced no output
sends why instead, so every rank reaches the exchange for every collective case and none waits forever. The
ranks that disagree with rank 0 fail the case: recorded as `parity.layout.ranks_agree` / `ranks_differing`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from harness.lazy import torch

# A rank's message: ("out", {name: (dtype, shape, sha256)}) or ("none", "status: reason") (no output)
Message = tuple[str, Any]


def fingerprint(outputs: Mapping[str, Any] | None, why: str = "") -> Message:
    """This rank's message for its outputs (None: the case produced none, `why` says what happened)."""
    if outputs is None:
        return ("none", why)
    return ("out", {name: _tensor_print(t) for name, t in sorted(outputs.items())})


def _tensor_print(t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return repr(type(t).__name__)
    host = t.detach().cpu().contiguous()  # [*shape] on the host, dense
    data = host.reshape(-1).view(torch.uint8) if host.numel() else host.reshape(-1).to(torch.uint8)
    return (str(t.dtype), tuple(t.shape), hashlib.sha256(data.numpy().tobytes()).hexdigest())


def differing(messages: list[Message]) -> list[int]:
    """The ranks whose message differs from rank 0's."""
    return [rank for rank, message in enumerate(messages) if rank and message != messages[0]]


def failure_reason(messages: list[Message], ranks: list[int]) -> str:
    """The record's reason: names the ranks that disagree with rank 0 (and why a rank had no output)."""
    parts = []
    for rank in ranks:
        kind, detail = messages[rank]
        if kind == "none":
            parts.append(f"rank {rank} produced no output ({detail})")
        else:
            parts.append(f"rank {rank}'s output differs from rank 0's")
    return "ranks disagree: " + "; ".join(parts) + " (every rank holds the same all-gathered output)"
