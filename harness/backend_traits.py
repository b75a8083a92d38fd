"""What a backend class declares for the harness around it, so the core never tests a backend's or vendor's name:
the Ray resources a task running it asks for, and whether it is its device's eager reference (a mixin of Backend,
so backend.py stays one job). Records carry the declarations (`environment.backend`), so readers of a results
file need no backend class to interpret them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class BackendTraits:
    """`ray_resources`: the `.options(...)` keywords of a Ray task running this backend beyond its CPU, e.g.
    `{"num_gpus": 1}` or a custom resource `{"resources": {"NPU": 1}}` (nodes declare it with `ray start
    --resources`); {} (the default) is host CPU work, asking for the run's --threads CPUs.
    `eager_reference`: True for eager torch on the backend's device (torch-cpu, cuda): the backend another one's
    speed on the same device class is held against by the implausible-speedup notice (harness/timing_view.py).
    It is the class's own declaration, never inherited (`is_eager_reference`): a plugin subclassing TorchCpu
    with a faster kernel must be held against torch-cpu, not become a reference of itself."""

    ray_resources: ClassVar[Mapping[str, Any]] = {}
    eager_reference: ClassVar[bool] = False

    @classmethod
    def declared(cls) -> dict[str, Any]:
        """The declarations a record's `environment.backend` carries beside the backend's own environment()."""
        return {"device": getattr(cls, "device", "cpu"), "eager_reference": cls.is_eager_reference()}

    @classmethod
    def is_eager_reference(cls) -> bool:
        """This very class declares itself eager torch on its device (a subclass does not inherit it)."""
        return bool(vars(cls).get("eager_reference", False))
