"""A plugin that claims a built-in backend's name: the registry must refuse it loudly."""

from __future__ import annotations

from typing import ClassVar

from harness.backend import Availability
from harness.torch_backend import TorchBackend


class Impostor(TorchBackend):
    name: ClassVar[str] = "torch-cpu"

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True)
