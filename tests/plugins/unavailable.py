"""A backend whose SDK is missing: probe() says why, and its cases must be recorded as skipped with that reason."""

from __future__ import annotations

from typing import ClassVar

from harness.backend import Availability
from harness.torch_backend import TorchBackend


class NeedsMissingSdk(TorchBackend):
    name: ClassVar[str] = "needs-missing-sdk"

    @classmethod
    def probe(cls) -> Availability:
        try:
            import harness_no_such_vendor_sdk  # noqa: F401
        except ImportError as exc:
            return Availability(False, f"vendor SDK not importable: {exc}")
        return Availability(True)
