"""A backend with options, as a third-party plugin declares them: `--backend-option` must reach its constructor."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from harness.backend import MathMode
from harness.backend_options import BackendOption
from harness.backends.torch_cpu import TorchCpu

ENTERED: list[str] = []  # math-mode contexts entered, in order (calibration test)


@contextlib.contextmanager
def _noted(mode: str) -> Iterator[None]:
    ENTERED.append(mode)
    yield


class Optioned(TorchCpu):
    """torch-cpu whose `bias` option adds a constant to every attention output: 0 is correct, anything else fails."""

    name: ClassVar[str] = "optioned-cpu"
    options: ClassVar[Mapping[str, BackendOption]] = {
        "bias": BackendOption("added to attention outputs", 0.0, float, "a number"),
        "exact": BackendOption.flag("an extra math mode for calibration", default=True),
    }

    def __init__(self, *, bias: float = 0.0, exact: bool = True) -> None:
        super().__init__()
        self.bias = bias
        self.exact = exact

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), "bias": self.bias, "exact": self.exact}

    def attention(self, q, k, v, **kwargs):  # type: ignore[override]
        return super().attention(q, k, v, **kwargs) + self.bias

    def math_modes(self) -> Mapping[str, MathMode]:
        return {**super().math_modes(), "float32_noted": MathMode("float32", lambda: _noted("float32_noted"))}

    def math_mode(self, dtype: str) -> str:
        return "float32_noted" if dtype == "float32" and self.exact else dtype
