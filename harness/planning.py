"""Planning: a suite becomes the list of cases to run, and every selection problem is found before anything runs
(unknown names, an empty selection, user inputs or a checkpoint that do not fit: UsageError, exit code 2).

The planner also answers, for a planned case, which shape its inputs take (a preset's, a checkpoint's, or the
user's own tensors'), since it validated those while planning."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.backend import BackendRegistry, RegistryError
from harness.dtypes import DTYPES, is_quantized
from harness.lazy import torch
from harness.names import BadInputError, did_you_mean, unknown_name
from harness.saved import SavedOutputs, SavedOutputsError
from harness.suites import Suite
from harness.workload import USER_SHAPE, Case, Workload, WorkloadError, WorkloadRegistry

USER_INPUTS = "user"  # the `inputs` field of cases run on the user's own tensors


class UsageError(BadInputError):
    """A selection that cannot run: unknown names, empty selection, inputs that do not fit (exit code 2)."""


def against_source(target: str | None, backends: BackendRegistry) -> SavedOutputs | None:
    """--against: the --save-outputs directory to compare with (None for a backend of this run, or no
    --against). Raises UsageError when the target is neither."""
    if target is None:
        return None
    if Path(target).is_dir():
        saved = SavedOutputs(Path(target))
        try:
            saved.baseline_backend()
        except SavedOutputsError as exc:
            raise UsageError(str(exc)) from None
        return saved
    try:
        backends.get(target)
    except RegistryError:
        raise UsageError(
            f"--against {target!r} is neither a directory written by --save-outputs nor a backend "
            f"(known backends: {', '.join(backends.names())})"
        ) from None
    return None


class Planner:
    """Suite -> cases, in input-group order (the backend varies fastest, so a group's inputs are made once)."""

    def __init__(
        self,
        backends: BackendRegistry,
        workloads: WorkloadRegistry,
        *,
        model_path: str | None = None,
        user_inputs: Mapping[str, torch.Tensor] | None = None,
        layerwise: bool = False,
    ) -> None:
        self.backends = backends
        self.workloads = workloads
        self.model_path = model_path  # --model: a user's checkpoint directory instead of seeded weights
        self.user_inputs = dict(user_inputs) if user_inputs is not None else None
        self.layerwise = layerwise  # --layerwise: some selected workload must have layers
        self.shape_filter: tuple[str, ...] = ()
        self.excluded = 0  # cases the suite's exclude globs left out of the last plan
        self._checkpoint_shapes: dict[tuple[str, str, str], Any] = {}

    def plan(self, suite: Suite) -> list[Case]:
        """Cases in input-group order. Raises UsageError on a bad selection."""
        try:
            workloads = self.workloads.select(suite.workloads)
            backends = self.backends.select(suite.backends)
        except (WorkloadError, RegistryError) as exc:
            raise UsageError(str(exc)) from None
        for dtype in suite.dtypes:
            if dtype not in DTYPES:
                raise UsageError(unknown_name("dtype", dtype, DTYPES))
        self.shape_filter = suite.shapes
        if self.layerwise and not any(w.has_layers for w in workloads):
            layered = [n for n in self.workloads.names() if self.workloads.get(n).has_layers]
            raise UsageError(
                f"--layerwise applies to workloads with layers ({', '.join(layered) or 'none registered'}); "
                f"none of the selected ones has: {', '.join(w.name for w in workloads)}"
            )
        if self.model_path is not None:
            workloads = self._checkpoint_workloads(workloads, suite.presets)
        cases = []
        known_shapes: set[str] = set()
        user = self.user_inputs is not None
        for w in workloads:
            for preset in suite.presets:
                try:
                    known_shapes.update(w.shapes(preset))
                except WorkloadError as exc:
                    raise UsageError(str(exc)) from None
                shapes = self._selected_shapes(w, preset)
                if user and shapes:
                    self.user_shape(w, preset)  # validates now, so bad inputs exit 2 before anything runs
                    shapes = [USER_SHAPE]
                dists = [USER_INPUTS] if user else [d for d in suite.inputs if d in w.distributions]
                seeds = [0] if user else list(suite.seeds)
                for shape in shapes:
                    for dtype in (d for d in suite.dtypes if not is_quantized(d) or d in w.quant_formats):
                        for dist in dists:
                            for seed in seeds:
                                cases += [Case(w.name, preset, shape, dtype, dist, seed, b, w.op) for b in backends]
        planned = len(cases)
        cases = [c for c in cases if not any(fnmatch.fnmatchcase(c.key, p) for p in suite.exclude)]
        self.excluded = planned - len(cases)
        unknown = [s for s in suite.shapes if s not in known_shapes]
        if unknown:
            raise UsageError(
                f"unknown shape {unknown[0]!r} for the selected workloads; shapes: {', '.join(sorted(known_shapes))}"
                + did_you_mean(unknown[0], sorted(known_shapes))
            )
        if not cases:
            self._no_quantized_taker(workloads, suite.dtypes)
            raise UsageError("the selection is empty: no workload x preset x shape x dtype x backend combination")
        return cases

    def _no_quantized_taker(self, workloads: list[Workload], dtypes: tuple[str, ...]) -> None:
        """An empty plan because no selected workload computes in the selected quantized formats: say which
        workloads do (UsageError), instead of the bare "selection is empty"."""
        if not dtypes or not all(is_quantized(d) for d in dtypes):
            return
        if any(d in w.quant_formats for w in workloads for d in dtypes):
            return  # emptied by something else (shapes, exclude globs)
        takers = [self.workloads.get(n) for n in self.workloads.names()]
        listed = ", ".join(f"{w.name} ({', '.join(w.quant_formats)})" for w in takers if w.quant_formats)
        raise UsageError(
            f"dtype {', '.join(dtypes)}: no selected workload computes in {'it' if len(dtypes) == 1 else 'them'} "
            f"({', '.join(w.name for w in workloads)}); "
            f"the quantized formats apply to: {listed or 'no registered workload'}"
        )

    def _checkpoint_workloads(self, workloads: list[Workload], presets: tuple[str, ...]) -> list[Workload]:
        """The selected workloads that take the --model checkpoint (validated once, here: exit 2 if bad)."""
        path = self.model_path
        assert path is not None
        taking = []
        for w in workloads:
            for preset in presets:
                for name, shape in w.shapes(preset).items():
                    try:
                        checkpoint = w.checkpoint_shape(shape, path)
                    except WorkloadError as exc:
                        raise UsageError(str(exc)) from None
                    if checkpoint is None:
                        break
                    self._checkpoint_shapes[(w.name, preset, name)] = checkpoint
                    if w not in taking:
                        taking.append(w)
        if not taking:
            raise UsageError(self._untaken_checkpoint(path, workloads))
        return taking

    def _untaken_checkpoint(self, path: str, selected: list[Workload]) -> str:
        """Why no selected workload takes the checkpoint: its kind, and which workloads take which kinds."""
        every = [self.workloads.get(n) for n in self.workloads.names()]
        try:
            kind = next((k for w in every if (k := w.checkpoint_type(path)) is not None), None)
        except WorkloadError as exc:
            return str(exc)
        takers = {t: w.name for w in every for t in w.checkpoint_types()}
        names = ", ".join(w.name for w in selected)
        shown = "an unknown kind" if kind is None else repr(kind)
        if kind in takers:
            return (
                f"--model {path}: none of the selected workloads ({names}) takes this checkpoint ({shown}); "
                f"{takers[kind]} does: select it with -w {takers[kind]}"
            )
        supported = ", ".join(f"{t} ({w})" for t, w in takers.items()) or "none"
        return (
            f"--model {path}: none of the selected workloads ({names}) takes this checkpoint's architecture "
            f"({shown}); supported: {supported}{did_you_mean(kind or '', takers)}"
        )

    def _selected_shapes(self, workload: Workload, preset: str) -> list[str]:
        """The preset's shape names that pass --shape (all when none was given)."""
        return [s for s in workload.shapes(preset) if not self.shape_filter or s in self.shape_filter]

    def template(self, workload: Workload, preset: str, shape_name: str) -> Any:
        """A preset shape whose non-tensor settings (mask, routing rule; the --model checkpoint) apply to
        tensors from a file."""
        checkpoint = self._checkpoint_shapes.get((workload.name, preset, shape_name))
        if checkpoint is not None:
            return checkpoint
        shapes = workload.shapes(preset)
        if shape_name in shapes:
            return shapes[shape_name]
        selected = self._selected_shapes(workload, preset) or list(shapes)
        return shapes[selected[0]]

    def user_shape(self, workload: Workload, preset: str) -> Any:
        """The shape of the user's own tensors (--inputs)."""
        assert self.user_inputs is not None
        try:
            workload.check_user_tensors(self.user_inputs)
            return workload.shape_from_inputs(self.user_inputs, self.template(workload, preset, ""))
        except WorkloadError as exc:
            raise UsageError(f"--inputs: {exc}") from None

    def generated_shape(self, workload: Workload, case: Case) -> Any:
        """The shape of a case whose inputs are generated: the checkpoint's under --model, else the preset's."""
        checkpoint = self._checkpoint_shapes.get((case.workload, case.preset, case.shape))
        return checkpoint if checkpoint is not None else workload.shape(case.preset, case.shape)
