"""A backend that raises where the harness does not expect it (capabilities(), which `harness list` calls
outside any guard): the CLI must answer with one line, the traceback only with --debug."""

from __future__ import annotations

from typing import Any, ClassVar

from harness.backends.torch_cpu import TorchCpu


class RaisingCapabilities(TorchCpu):
    name: ClassVar[str] = "raising-capabilities"

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        raise RuntimeError("capabilities exploded")
