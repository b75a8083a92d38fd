"""Saved inputs and outputs (--save-outputs DIR), and reading them back to judge another machine (--against DIR).

Layout: DIR/<input key with '/' as '__'>/inputs.safetensors holds the exact tensors a case group saw, and as
metadata the norm of their float64 reference (so the other side can tell it is judging the same function: an
LLM's model is rebuilt there, from the same seed or --model); DIR/<...>/<backend>.safetensors holds that
backend's outputs by the names its workload collects them under: `out` the primary output (all a directory of
an older harness holds), plus MoE's free-routing output and routing, an LLM's decode-step logits and greedy
tokens. Safetensors files carry the case as metadata so a directory can be inspected without the harness.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.lazy import torch

if TYPE_CHECKING:
    from harness.workload import Case, CaseInputs, Workload

INPUTS_FILE = "inputs.safetensors"
REFERENCE_KEY = "reference_l2"  # inputs.safetensors metadata: the float64 reference's L2 norm
REFERENCE_RTOL = 1e-6  # float64 references of the same function on two machines differ by rounding only
# How the reason of a case the --against directory holds nothing for begins: such a case was planned here but
# not judged, which the port verdict counts apart (harness/port.py).
NOT_SAVED = "not in the saved run"


def _safetensors() -> Any:
    """safetensors' torch API, imported when a file is read or written (it imports torch)."""
    from safetensors import torch as st

    return st


class SavedOutputsError(ValueError):
    """A --against directory that cannot serve as a baseline, or one of its files that cannot be read (the
    executor turns the latter into an `error` record of that case group alone)."""


def _unreadable(path: Path, exc: Exception) -> SavedOutputsError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return SavedOutputsError(
        f"{path} is not a safetensors file ({detail}); --against DIR reads the files --save-outputs wrote: "
        "save that case again or delete its folder"
    )


def _load(path: Path, needs: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A saved file's tensors; a file safetensors cannot read (or without a tensor it `needs`) raises
    SavedOutputsError naming it. safetensors raises its own error type, OSError or ValueError by version."""
    try:
        tensors: dict[str, torch.Tensor] = _safetensors().load_file(str(path))
    except Exception as exc:  # SafetensorError derives from Exception only
        raise _unreadable(path, exc) from None
    missing = [n for n in needs if n not in tensors]
    if missing:
        held = ", ".join(sorted(tensors)) or "none"
        if missing == ["out"]:
            raise SavedOutputsError(
                f"{path} holds no tensor 'out' (it holds: {held}); a saved output is the tensor 'out', as "
                "--save-outputs writes it"
            )
        raise SavedOutputsError(
            f"{path} holds no tensor {missing[0]!r} (it holds: {held}); this workload is judged against a saved "
            f"run by its outputs {', '.join(needs)}, which --save-outputs of this harness writes (an older one "
            "saved 'out' alone): save the source run again"
        )
    return tensors


def _metadata(path: Path) -> dict[str, str]:
    """A saved file's metadata (empty when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _dirname(case: Case) -> str:
    return case.input_key.replace("/", "__")


class SavedOutputs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(self, case: Case, group: CaseInputs, outputs: dict[str, torch.Tensor]) -> None:
        """The group's inputs (once) with its reference's norm, and this backend's named outputs."""
        folder = self.root / _dirname(case)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"case": json.dumps(case.to_record())}
        if not (folder / INPUTS_FILE).exists():
            tensors = {n: t.contiguous() for n, t in group.tensors.items() if isinstance(t, torch.Tensor)}
            reference = {REFERENCE_KEY: repr(float(group.reference().double().norm()))}
            _safetensors().save_file(tensors, str(folder / INPUTS_FILE), metadata={**meta, **reference})
        tensors = {n: t.contiguous() for n, t in outputs.items()}
        _safetensors().save_file(tensors, str(folder / f"{case.backend}.safetensors"), metadata=meta)

    def backends(self) -> list[str]:
        names = {p.stem for p in self.root.glob("*/*.safetensors") if p.name != INPUTS_FILE}
        return sorted(names)

    def baseline_backend(self) -> str:
        """The one backend whose outputs the directory holds (the platform being ported from)."""
        names = self.backends()
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise SavedOutputsError(
                f"--against {self.root}: expected saved outputs of exactly one backend, found {found}; "
                "save the source platform's run alone with --save-outputs"
            )
        return names[0]

    def load_inputs(self, case: Case) -> dict[str, torch.Tensor] | None:
        path = self.inputs_path(case)
        return _load(path) if path.is_file() else None

    def inputs_path(self, case: Case) -> Path:
        return self.root / _dirname(case) / INPUTS_FILE

    def fit_inputs(self, case: Case, workload: Workload, template: Any) -> tuple[dict[str, torch.Tensor], Any] | None:
        """The case group's saved inputs and the shape they have (None: nothing saved for it). Inputs that do
        not fit the workload (a tensor missing, unknown, of another rank or kind, or shapes the workload
        refuses) raise SavedOutputsError naming the file and what did not fit: a case the source saved must be
        judged, never quietly skipped, or a port verdict could pass on cases nobody judged."""
        from harness.workload import WorkloadError

        tensors = self.load_inputs(case)
        if tensors is None:
            return None
        try:
            workload.check_user_tensors(tensors)
            shape = workload.shape_from_inputs(tensors, template)
        except (WorkloadError, KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            detail = str(exc) if isinstance(exc, WorkloadError) else f"{type(exc).__name__}: {exc}"
            raise SavedOutputsError(
                f"{self.inputs_path(case)}: the saved inputs do not fit {case.workload} "
                f"({case.preset}/{case.shape}): {detail}; save the source run again with this harness"
            ) from None
        return tensors, shape

    def load_outputs(self, case: Case, backend: str, needs: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The backend's saved outputs of the case (None: none saved); SavedOutputsError if one `needs` is
        missing or the file cannot be read."""
        path = self.output_path(case, backend)
        return _load(path, needs=needs) if path.is_file() else None

    def check_reference(self, case: Case, reference: torch.Tensor) -> None:
        """Raise SavedOutputsError when this side's float64 reference is not the saving side's (a directory
        of an older harness has no record of it, and passes)."""
        path = self.root / _dirname(case) / INPUTS_FILE
        saved = _metadata(path).get(REFERENCE_KEY) if path.is_file() else None
        if saved is None:
            return
        here, there = float(reference.double().norm()), float(saved)
        if not abs(here - there) <= REFERENCE_RTOL * max(abs(there), 1e-300):
            raise SavedOutputsError(
                f"{path}: the float64 reference of these inputs has norm {here:.9g} here but {there:.9g} where "
                "they were saved, so the two sides do not run the same function (another --model checkpoint, "
                "other seeded weights or another harness version): give this side the source's --model"
            )

    def output_path(self, case: Case, backend: str) -> Path:
        return self.root / _dirname(case) / f"{backend}.safetensors"
