"""Saved inputs and outputs (--save-outputs DIR), and reading them back to judge another machine (--against DIR).

Layout: DIR/<input key with '/' as '__'>/inputs.safetensors holds the exact tensors a case group saw;
DIR/<...>/<backend>.safetensors holds that backend's output as `out`. Safetensors files carry the case as
metadata so a directory can be inspected without the harness.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.lazy import torch

if TYPE_CHECKING:
    from harness.workload import Case

INPUTS_FILE = "inputs.safetensors"


def _safetensors() -> Any:
    """safetensors' torch API, imported when a file is read or written (it imports torch)."""
    from safetensors import torch as st

    return st


class SavedOutputsError(ValueError):
    """A --against directory that cannot serve as a baseline, or one of its files that cannot be read (the
    executor turns the latter into an `error` record of that case group alone)."""


def _load(path: Path, needs: str | None = None) -> dict[str, torch.Tensor]:
    """A saved file's tensors; a file safetensors cannot read (or without the tensor `needs`) raises
    SavedOutputsError naming it. safetensors raises its own error type, OSError or ValueError by version."""
    try:
        tensors: dict[str, torch.Tensor] = _safetensors().load_file(str(path))
    except Exception as exc:  # SafetensorError derives from Exception only
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SavedOutputsError(
            f"{path} is not a safetensors file ({detail}); --against DIR reads the files --save-outputs wrote: "
            "save that case again or delete its folder"
        ) from None
    if needs is not None and needs not in tensors:
        raise SavedOutputsError(
            f"{path} holds no tensor {needs!r} (it holds: {', '.join(sorted(tensors)) or 'none'}); a saved output "
            "is the tensor 'out', as --save-outputs writes it"
        )
    return tensors


def _dirname(case: Case) -> str:
    return case.input_key.replace("/", "__")


class SavedOutputs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(self, case: Case, inputs: dict[str, torch.Tensor], out: torch.Tensor) -> None:
        folder = self.root / _dirname(case)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"case": json.dumps(case.to_record())}
        if not (folder / INPUTS_FILE).exists():
            tensors = {n: t.contiguous() for n, t in inputs.items() if isinstance(t, torch.Tensor)}
            _safetensors().save_file(tensors, str(folder / INPUTS_FILE), metadata=meta)
        _safetensors().save_file({"out": out.contiguous()}, str(folder / f"{case.backend}.safetensors"), metadata=meta)

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
        path = self.root / _dirname(case) / INPUTS_FILE
        return _load(path) if path.is_file() else None

    def load_output(self, case: Case, backend: str) -> torch.Tensor | None:
        path = self.output_path(case, backend)
        return _load(path, needs="out")["out"] if path.is_file() else None

    def output_path(self, case: Case, backend: str) -> Path:
        return self.root / _dirname(case) / f"{backend}.safetensors"
