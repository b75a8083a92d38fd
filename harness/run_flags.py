"""What `harness run` was given on its command line, turned into a RunRequest: the suite with the flags'
overrides, the timing, the backend options (aliases included) and the budget overrides, each value checked here
so a bad one is one line and exit 2 (SuiteError, BackendOptionError) before anything runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from harness.launch import RunRequest
from harness.names import DEFAULT_AGAINST_RATIO, did_you_mean, split_values
from harness.run_options import RayConfig, RunOptions
from harness.suites import Suite, SuiteError, check_values, parse_threads, resolve_suite, resolve_threads

FORMAT_PREFIX = "format_error."  # --budget format_error.rel_l2=0.05: the format error's own budget

# Suite list fields and the flags that override them (`--distribution` overrides the suite's `inputs`).
SUITE_LISTS = {
    "workloads": "workloads",
    "backends": "backends",
    "dtypes": "dtypes",
    "presets": "presets",
    "shapes": "shapes",
    "distributions": "inputs",
}


@dataclass(frozen=True)
class RunFlags:
    """The options of `harness run`, as click passes them (names are the command's parameter names)."""

    suite: str = "smoke"
    workloads: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()
    seeds: str | None = None
    distributions: tuple[str, ...] = ()
    out: Path | None = None
    parity_only: bool = False
    determinism: bool | None = None
    threads: str | None = None
    time_oracles: bool = False
    time_budget: float | None = None
    backend_options: tuple[str, ...] = ()
    graphs: bool | None = None
    cold_cache: bool = False
    allow_tf32: bool = False
    inputs_file: str | None = None
    save_outputs: Path | None = None
    against: str | None = None
    against_ratio: float = DEFAULT_AGAINST_RATIO
    budgets: tuple[str, ...] = ()
    layerwise: bool = False
    invariance: bool = False
    require_invariance: bool = False
    model_path: str | None = None
    isolate: bool = False
    case_timeout: float | None = None  # None: not given (RunRequest's default applies)
    resume: Path | None = None
    rerun_errors: bool = False
    no_table: bool = False
    summary_format: str = "text"
    executor: str = "local"
    ray_address: str | None = None
    ray_retries: int | None = None  # None: not given
    plugins: tuple[str, ...] = ()

    def request(self) -> RunRequest:
        self.check_isolation()
        ray = self.ray_config()
        chosen = self.chosen_suite()
        budget_s = self.checked_time_budget()
        timing = chosen.timing if budget_s is None else replace(chosen.timing, budget_s=budget_s)
        options = RunOptions(
            parity_only=self.parity_only,
            timing=timing,
            determinism=not self.parity_only if self.determinism is None else self.determinism,
            threads=resolve_threads(chosen.threads),
            time_oracles=self.time_oracles,
            save_outputs=self.save_outputs,
            against=self.against,
            against_ratio=self.checked_against_ratio(),
            budget_overrides=self.budget_overrides(),
            format_budget_overrides=self.budget_overrides(FORMAT_PREFIX) or None,
            layerwise=self.layerwise,
            invariance=self.invariance or self.require_invariance,
            require_invariance=self.require_invariance,
            model_path=self.model_path,
            backend_options=self.resolved_backend_options(chosen),
        )
        return RunRequest(
            chosen,
            options,
            plugins=tuple(split_values(self.plugins)),
            inputs_file=self.inputs_file,
            out=self.out,
            resume=self.resume,
            rerun_errors=self.rerun_errors,
            isolate=self.isolate,
            **({} if self.case_timeout is None else {"case_timeout": self.case_timeout}),
            summary=not self.no_table,
            summary_format=self.summary_format,
            ray=ray,
        )

    def chosen_suite(self) -> Suite:
        """The named suite with the command line's overrides; bad values raise SuiteError (exit 2)."""
        chosen = resolve_suite(self.suite)
        overrides: dict[str, Any] = {
            field: tuple(split_values(getattr(self, flag)))
            for flag, field in SUITE_LISTS.items()
            if getattr(self, flag)
        }
        if self.seeds is not None:
            try:
                overrides["seeds"] = tuple(int(s) for s in self.seeds.split(",") if s.strip())
            except ValueError:
                raise SuiteError(f"--seeds {self.seeds!r}: expected a comma list of integers, e.g. 0,1,2") from None
        if self.threads is not None:
            try:
                overrides["threads"] = parse_threads(self.threads)
            except SuiteError as exc:
                raise SuiteError(f"--threads: {exc}") from None
        suite = replace(chosen, **overrides)
        check_values(suite, self.flag_name)  # the same checks as a suite file's (seeds >= 0, known dtypes...)
        return suite

    @staticmethod
    def flag_name(field: str) -> str:
        """The flag that overrides a suite field, for messages about the value it was given."""
        flags = {"inputs": "--distribution", "dtypes": "--dtype", "seeds": "--seeds", "backend_options": "suite"}
        return flags.get(field, f"--{field}")

    def checked_time_budget(self) -> float | None:
        """--time-budget: a positive, finite number of seconds (as [timing] budget_s in a suite file)."""
        budget = self.time_budget
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise SuiteError(f"--time-budget {budget}: expected a positive number of seconds, e.g. 0.5")
        return budget

    def checked_against_ratio(self) -> float:
        """--against-ratio: a finite number >= 1 (click's range lets NaN and infinity through)."""
        if not (math.isfinite(self.against_ratio) and self.against_ratio >= 1):
            raise SuiteError(f"--against-ratio {self.against_ratio}: expected a finite number >= 1, e.g. 2")
        return self.against_ratio

    def resolved_backend_options(self, chosen: Suite) -> dict[str, dict[str, str]]:
        """Backend name -> option -> raw value for the selected backends (and an --against backend): the suite's
        settings and the alias flags where a backend declares them, then --backend-option, each checked here."""
        from harness.backend import default_registry
        from harness.backend_options import OptionSetting, resolve

        registry = default_registry(split_values(self.plugins))
        selected = registry.select(chosen.backends)
        if self.against is not None and self.against in registry.names() and self.against not in selected:
            selected.append(self.against)
        aliases = {"graphs": self.graphs, "cold_cache": self.cold_cache or None, "tf32": self.allow_tf32 or None}
        settings = [
            replace(OptionSetting.parse(item, source="suite backend_options"), alias=True)
            for item in chosen.backend_options
        ]
        settings += [
            OptionSetting(key, str(int(value)), alias=True) for key, value in aliases.items() if value is not None
        ]
        settings += [OptionSetting.parse(item) for item in self.backend_options]  # not split: a value may hold a comma
        return resolve(registry, selected, settings)

    def budget_overrides(self, prefix: str = "") -> dict[str, float]:
        """--budget FIELD=VALUE items as Budget field -> value: the case's budget (no prefix), or with
        FORMAT_PREFIX the budget a quantized case's format error alone is judged against."""
        from harness.parity import Budget

        names = {f.name for f in fields(Budget)}
        keys = sorted(names) + [f"{FORMAT_PREFIX}{n}" for n in sorted(names)]
        overrides = {}
        for item in split_values(self.budgets):
            key, sep, value = item.partition("=")
            if not sep or key not in keys:
                allowed = ", ".join(sorted(names))
                hint = did_you_mean(key, keys) if sep else ""
                raise SuiteError(
                    f"--budget {item!r}: expected FIELD=VALUE with FIELD one of: {allowed} (or "
                    f"{FORMAT_PREFIX}FIELD: the quantized formats' own error alone){hint}"
                )
            try:
                number = float(value)
            except ValueError:
                raise SuiteError(f"--budget {item!r}: {value!r} is not a number") from None
            if not (math.isfinite(number) and number >= 0):
                raise SuiteError(f"--budget {item!r}: expected a finite number >= 0")
            if key.startswith(FORMAT_PREFIX) == bool(prefix):
                overrides[key.removeprefix(prefix)] = number
        return overrides

    def check_isolation(self) -> None:
        """--case-timeout is enforced by killing the case's own process: without --isolate there is none to
        kill, so the flag would be silently ignored (and a hanging case would hang the run)."""
        if self.case_timeout is not None and not self.isolate:
            raise SuiteError(
                f"--case-timeout {self.case_timeout:g} needs --isolate (each case in its own process, which the "
                "timeout kills); add --isolate or drop --case-timeout"
            )

    def ray_config(self) -> RayConfig | None:
        """--executor ray and its options: Ray installed here (else exit 2 with the extra to install), and the
        --ray-* options only with it (they would be silently ignored by a local run)."""
        if self.executor != "ray":
            for flag, value in (("--ray-address", self.ray_address), ("--ray-retries", self.ray_retries)):
                if value is not None:
                    raise SuiteError(f"{flag} goes with --executor ray; add --executor ray or drop {flag}")
            return None
        from harness.ray_executor import require_ray

        require_ray()
        return RayConfig(address=self.ray_address, retries=self.ray_retries or 0)
