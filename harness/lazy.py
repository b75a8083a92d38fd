"""torch, imported on first use.

Importing torch costs most of a second. The harness's modules and its built-in backends and workloads name torch
at their top level only in annotations and function bodies, so they take it from here: `harness --help`, option
errors and `harness list` then never import it unless something computes (a probe that must ask torch, a case).
On first attribute access a proxy imports the real module and copies its namespace into itself, so later
lookups are ordinary attribute lookups, as fast as on the module.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A module that imports `target` the first time one of its attributes is read."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.__dict__["_lazy_target"] = target

    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module(self.__dict__["_lazy_target"])
        self.__dict__.update({k: v for k, v in vars(module).items() if k not in ("__name__", "__spec__")})
        return getattr(module, name)

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_target']!r}>"


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
