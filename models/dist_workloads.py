"""The distributed workloads (`dist.*`; the `harness.workloads` entry point `dist`)."""

from __future__ import annotations

from harness.models import dist_attention, dist_llm, dist_moe
from harness.workload import Workload


def workloads() -> list[Workload]:
    return [*dist_moe.workloads(), *dist_attention.workloads(), *dist_llm.workloads()]
