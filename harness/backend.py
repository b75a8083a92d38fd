"""The backend registry: name -> Backend class, from the `harness.backends` entry points and `--plugin`
modules, with each class checked as it registers; `create` builds one with its `--backend-option`s.

The contract itself (the `Backend` ABC, Availability, Support...) is harness/backend_base.py; this module
re-exports it, so `from harness.backend import Backend` stays the plugins' one import path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harness.backend_base import (  # noqa: F401 - re-exported: the contract's public home stays harness.backend
    YES,
    Availability,
    Backend,
    MathMode,
    Support,
    UnsupportedCaseError,
    check_accepts,
)
from harness.backend_options import parse_options
from harness.dtypes import DTYPES  # re-exported: plugins import it from here
from harness.names import BadInputError, unknown_name
from harness.plugins import PluginError, entry_points, import_plugin

log = logging.getLogger(__name__)

BACKEND_GROUP = "harness.backends"


DEVICES = "devices"  # in a backend list: every registered backend whose device is not the host CPU


class RegistryError(BadInputError):
    """Bad registry use: an unknown name, a duplicate name, a plugin without backends."""


# Keywords of route / moe before RoutingSpec: a plugin written against them is refused with the new signature.
OLD_ROUTING_KEYWORDS = frozenset(
    [
        *("top_k", "scheme", "n_group", "topk_group", "scaling", "renormalize"),  # now RoutingSpec's fields
        *("shared_gate", "routing_override", "return_routing"),  # now SharedExpert.gate, routing=, always returned
    ]
)
NEW_ROUTING_SIGNATURES = {
    "route": "route(logits, spec: RoutingSpec, *, bias=None) -> Routing",
    "moe": "moe(x, router_w, w_gate, w_up, w_down, spec: RoutingSpec, *, bias=None, shared: SharedExpert | None "
    "= None, routing: Routing | None = None) -> (out, Routing)",
}


def _old_routing_signature(cls: type[Backend]) -> str:
    """What is wrong when a class implements `route` / `moe` with the keyword signature used before RoutingSpec
    (top_k=, scheme=, ..., routing_override=, return_routing=); "" when nothing is."""
    for op, new in NEW_ROUTING_SIGNATURES.items():
        method = getattr(cls, op)
        if method is getattr(Backend, op):
            continue
        params = inspect.signature(method).parameters
        old = sorted(OLD_ROUTING_KEYWORDS & set(params))
        catch_all = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
        if old or not (catch_all or "spec" in params):
            found = f"takes {', '.join(old)}" if old else "has no `spec` parameter"
            return (
                f"implements {op} with the old signature ({found}): route and moe now take the routing "
                f"arguments as one harness.ops.RoutingSpec and moe always returns (out, Routing); "
                f"implement {new}"
            )
    return ""


@dataclass(frozen=True)
class Registration:
    cls: type[Backend]
    origin: str


@dataclass
class BackendRegistry:
    """Name -> backend class, fed by the `harness.backends` entry points and `--plugin` modules."""

    _entries: dict[str, Registration] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)

    def register(self, cls: type[Backend], origin: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise RegistryError(f"{origin}: {cls!r} is not a harness.backend.Backend subclass")
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise RegistryError(
                f"{origin}: backend class {cls.__name__} leaves abstract methods unimplemented: {missing}"
            )
        if not cls.name:
            raise RegistryError(f"{origin}: backend class {cls.__name__} has no `name`")
        outdated = _old_routing_signature(cls)
        if outdated:
            raise RegistryError(f"{origin}: backend class {cls.__name__} {outdated}")
        unknown = set(cls.dtypes) - set(DTYPES)
        if unknown:
            raise RegistryError(
                f"{origin}: backend {cls.name!r} lists unknown dtypes {sorted(unknown)}; known: {', '.join(DTYPES)}"
            )
        existing = self._entries.get(cls.name)
        if existing is not None:
            if existing.cls is cls:
                return
            raise RegistryError(
                f"backend name {cls.name!r} is registered twice: by {existing.origin} "
                f"({existing.cls.__module__}.{existing.cls.__qualname__}) and by {origin} "
                f"({cls.__module__}.{cls.__qualname__}); rename one of them"
            )
        self._entries[cls.name] = Registration(cls, origin)

    def load_entry_points(self) -> None:
        """Register every backend of the entry-point group; one that fails to import is listed, not fatal."""
        for ref in entry_points(BACKEND_GROUP):
            try:
                obj = ref.load()
            except PluginError as exc:
                self.load_errors[ref.name] = str(exc)
                log.warning("%s", exc)
                continue
            self.register(obj, ref.origin)  # type: ignore[arg-type]

    def load_plugin(self, spec: str) -> list[str]:
        """Register the concrete Backend subclasses a plugin module or file defines with a `name` of their own.

        Returns their names. A class that only inherits `name` (a shared helper base) is not registered.
        """
        module = import_plugin(spec)
        found = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Backend)
            and obj.__module__ == module.__name__
            and not inspect.isabstract(obj)
            and "name" in vars(obj)  # helper bases that only inherit a name are not backends of their own
            and obj.name
        ]
        if not found:
            raise RegistryError(f"plugin {spec!r} defines no concrete Backend subclass that sets its own `name`")
        for cls in found:
            self.register(cls, f"plugin {spec}")
        return [cls.name for cls in found]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> type[Backend]:
        try:
            return self._entries[name].cls
        except KeyError:
            raise RegistryError(unknown_name("backend", name, self.names())) from None

    def origin(self, name: str) -> str:
        return self._entries[name].origin

    def select(self, names: Iterable[str]) -> list[str]:
        """Validate a user's backend list, keeping order, no repeats: 'all' = every registered backend, 'devices'
        = those on an accelerator (class `device` other than the host "cpu"; the paper suite's default, so a
        machine without one skips its real shapes at once instead of running them on the CPU for hours)."""
        chosen: list[str] = []
        for name in names:
            group = [name]
            if name in ("all", DEVICES):
                group = [b for b in self.names() if name == "all" or self.get(b).device != "cpu"]
            for item in group:
                self.get(item)
                if item not in chosen:
                    chosen.append(item)
        return chosen

    def probe(self, name: str) -> Availability:
        """Probe without ever raising: a probe that crashes is itself an unavailability reason."""
        cls = self.get(name)
        try:
            result = cls.probe()
        except Exception as exc:
            return Availability(False, f"probe() raised {type(exc).__name__}: {exc}")
        if not isinstance(result, Availability):
            return Availability(False, f"probe() returned {result!r} instead of an Availability")
        return result

    def create(self, name: str, options: Mapping[str, str] | None = None) -> Backend:
        """An instance of the backend; `options` (option -> raw string) are parsed and passed to its constructor
        as keyword arguments, with every declared option not given at its default. A backend that declares no
        options is constructed without arguments."""
        cls = self.get(name)
        values = parse_options(cls, options or {})
        return cls(**values) if values else cls()


def default_registry(plugins: Iterable[str] = ()) -> BackendRegistry:
    """The registry of installed backends plus any `--plugin` modules or files."""
    registry = BackendRegistry()
    registry.load_entry_points()
    for spec in plugins:
        registry.load_plugin(spec)
    return registry
