"""Finding plugin objects: entry-point groups, `module:attr` references, and ad-hoc `--plugin` modules or files.

Shared by the backend and workload registries so both discover their members the same way. When the package
runs from a source tree without being installed (`PYTHONPATH=.`), the entry points are read from the tree's own
pyproject.toml, so built-ins register through the same table either way.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from harness.names import DIST_NAME, BadInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)


class PluginError(BadInputError):
    """A plugin that cannot be imported or does not provide what it should."""


@dataclass(frozen=True)
class EntryRef:
    """One entry of an entry-point group: a name, a `module:attr` reference, and where it was declared."""

    name: str
    value: str
    origin: str

    def load(self) -> object:
        return load_reference(self.value, origin=self.origin)


def load_reference(value: str, *, origin: str) -> object:
    """Import `module:attr` (attr may be dotted); failures name the reference and its origin."""
    module_name, _, attr = value.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:  # a broken plugin must not take the registry down (nor end the run)
        raise PluginError(f"cannot load {value!r} (from {origin}): {type(exc).__name__}: {exc}") from exc
    return obj


def _source_tree_pyproject() -> Path | None:
    candidate = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return candidate if candidate.is_file() else None


def entry_points(group: str) -> list[EntryRef]:
    """Entries of `group` from installed distributions; the source tree's pyproject if harness is not installed."""
    refs = [
        EntryRef(ep.name, ep.value, f"entry point {group}:{ep.name} of {ep.dist.name if ep.dist else '?'}")
        for ep in importlib.metadata.entry_points(group=group)
    ]
    try:
        importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        pyproject = _source_tree_pyproject()
        if pyproject is not None:
            table = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {}).get(group, {})
            refs += [EntryRef(name, value, f"{pyproject} [{group}]") for name, value in table.items()]
    return refs


def import_plugin(spec: str) -> ModuleType:
    """Import a plugin given as a module name (`pkg.mod`) or a path to a .py file."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        module_name = f"harness_plugin_{path.stem}_{digest}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"plugin file {spec!r} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[module_name]
            raise PluginError(f"plugin file {spec!r} failed to import: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except (Exception, SystemExit) as exc:
        raise PluginError(
            f"plugin {spec!r} is neither an existing .py file nor an importable module: {type(exc).__name__}: {exc}"
        ) from exc
