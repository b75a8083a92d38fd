"""Backend options: settings a backend declares (`tf32` on cuda, say) and a run passes to its constructor.

They replace environment variables: `harness run --backend-option [BACKEND:]KEY=VALUE` names them, the run's
options carry them (backend name -> option -> the raw string), the registry parses them and calls the backend's
constructor with them as keyword arguments, and the backend records them (environment, case details). Torch-free,
so `harness list` and option errors answer without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from harness.names import BadInputError, did_you_mean


class _Registry(Protocol):
    """What option checking needs of harness.backend.BackendRegistry (named structurally: no import cycle)."""

    def get(self, name: str) -> type: ...

    def names(self) -> list[str]: ...


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class BackendOptionError(BadInputError):
    """An option no selected backend declares, or a value its parser refuses (exit 2)."""


def parse_flag(text: str) -> bool:
    """A yes/no option: 1/true/yes/on or 0/false/no/off, any case."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}")


@dataclass(frozen=True)
class BackendOption:
    """One option a backend declares: shown by `harness list`, parsed from the raw string a run passes."""

    description: str
    default: Any
    parse: Callable[[str], Any]
    accepts: str  # the accepted values, for `harness list` and error messages
    process_wide: bool = False  # one setting for the whole process (a library's global flag): backends must agree

    @classmethod
    def flag(cls, description: str, default: bool = False, *, process_wide: bool = False) -> BackendOption:
        return cls(description, default, parse_flag, "0 or 1", process_wide)


@dataclass(frozen=True)
class OptionSetting:
    """One `[BACKEND:]KEY=VALUE` request. An alias (`--allow-tf32`, `--no-graphs`, a suite file's entry) applies
    where a selected backend declares the key and is ignored elsewhere, but its key must be one some registered
    backend declares (a typo is an error); an explicit setting must reach at least one selected backend."""

    key: str
    value: str
    backend: str | None = None
    alias: bool = False
    source: str = ""  # how the user wrote it, for messages

    @classmethod
    def parse(cls, text: str, *, source: str = "--backend-option") -> OptionSetting:
        target, sep, value = text.partition("=")
        backend, colon, key = target.rpartition(":")
        if not sep or not key.strip() or (colon and not backend.strip()):
            raise BackendOptionError(f"{source} {text!r}: expected [BACKEND:]KEY=VALUE, e.g. tf32=1 or cuda:tf32=1")
        return cls(key.strip(), value.strip(), backend.strip() or None, source=f"{source} {text}")


def _shown(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def declared(cls: type) -> Mapping[str, BackendOption]:
    return getattr(cls, "options", None) or {}


def _accepted(cls: type) -> str:
    opts = declared(cls)
    return ", ".join(f"{k} ({o.accepts})" for k, o in opts.items()) or "none"


def _offered(registry: _Registry, names: list[str]) -> str:
    """What the selected backends accept, backends with the same options together."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_accepted(registry.get(name)), []).append(name)
    with_options = [f"{', '.join(group)} accept {accepted}" for accepted, group in groups.items() if accepted != "none"]
    return "; ".join(with_options) if with_options else f"the selected backends ({', '.join(names)}) take no options"


def parse_options(cls: type, raw: Mapping[str, str]) -> dict[str, Any]:
    """Every option `cls` declares, parsed from `raw` (option -> string) or at its default; bad input raises."""
    opts = declared(cls)
    unknown = sorted(set(raw) - set(opts))
    if unknown:
        raise BackendOptionError(
            f"backend {cls.name} has no option {', '.join(map(repr, unknown))}; it accepts: {_accepted(cls)}"
            + did_you_mean(unknown[0], opts)
        )
    values = {}
    for key, option in opts.items():
        if key not in raw:
            values[key] = option.default
            continue
        try:
            values[key] = option.parse(raw[key])
        except ValueError as exc:
            raise BackendOptionError(
                f"backend {cls.name} option {key}={raw[key]!r}: {exc} (accepts {option.accepts})"
            ) from None
    return values


def resolve(
    registry: _Registry, selected: Iterable[str], settings: Iterable[OptionSetting]
) -> dict[str, dict[str, str]]:
    """Backend name -> option -> raw value for the selected backends; every value is checked by its parser here,
    so a bad one is exit 2 before anything runs. Later settings override earlier ones (aliases come first)."""
    chosen = list(selected)
    result: dict[str, dict[str, str]] = {}
    for setting in settings:
        if setting.backend:
            declared(registry.get(setting.backend))  # an unknown name is a RegistryError (exit 2) naming the known
            targets = [setting.backend]
        else:
            targets = [n for n in chosen if setting.key in declared(registry.get(n))]
            if not targets and setting.alias and _declared_anywhere(registry, setting.key):
                continue
            if not targets:
                raise BackendOptionError(
                    f"{setting.source}: no selected backend declares option {setting.key!r}; "
                    f"{_offered(registry, chosen)}"
                    + did_you_mean(setting.key, [k for n in chosen for k in declared(registry.get(n))])
                )
        for name in targets:
            try:
                parse_options(registry.get(name), {setting.key: setting.value})
            except BackendOptionError as exc:
                raise BackendOptionError(f"{setting.source}: {exc}") from None
            result.setdefault(name, {})[setting.key] = setting.value
    _check_process_wide(registry, chosen, result)
    return result


def _declared_anywhere(registry: _Registry, key: str) -> bool:
    return any(key in declared(registry.get(name)) for name in registry.names())


def _check_process_wide(registry: _Registry, chosen: list[str], result: Mapping[str, Mapping[str, str]]) -> None:
    """A process-wide option (torch's global TF32 flags) cannot differ between backends of one run: whichever
    backend was created last would set it for all, and the others' records would claim a mode they did not run."""
    values: dict[str, dict[str, Any]] = {}
    for name in chosen:
        for key, option in declared(registry.get(name)).items():
            if option.process_wide:
                raw = result.get(name, {}).get(key)
                values.setdefault(key, {})[name] = option.default if raw is None else option.parse(raw)
    for key, per_backend in values.items():
        if len(set(per_backend.values())) > 1:
            shown = ", ".join(f"{name}={_shown(v)}" for name, v in per_backend.items())
            raise BackendOptionError(
                f"option {key} is one setting for the whole process, but the selected backends would need "
                f"different values ({shown}); set it for all of them: --backend-option {key}=VALUE"
            )


def describe(registry: _Registry) -> list[tuple[str, str, str, str]]:
    """Rows (option, backends, default, description) for `harness list`; backends sharing an option share a row."""
    rows: dict[tuple[str, int], tuple[BackendOption, list[str]]] = {}
    for name in registry.names():
        for key, option in declared(registry.get(name)).items():
            rows.setdefault((key, id(option)), (option, []))[1].append(name)
    return [
        (key, ", ".join(names), f"{_shown(option.default)} ({option.accepts})", option.description)
        for (key, _), (option, names) in rows.items()
    ]
