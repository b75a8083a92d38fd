"""A third-party backend written against the keyword signature of route / moe used before RoutingSpec: the
registry must refuse it with one line saying what changed and what to implement instead."""

from __future__ import annotations

from typing import ClassVar

from harness.backend import Availability
from harness.torch_backend import TorchBackend


class OldStyleRouter(TorchBackend):
    name: ClassVar[str] = "old-style-router"

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True)

    def route(self, logits, *, top_k, scheme, bias=None, n_group=1, topk_group=1, scaling=1.0, renormalize):
        return super().route(logits, top_k=top_k, scheme=scheme, renormalize=renormalize)
