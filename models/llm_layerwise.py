"""Layer-wise capture and replay of a bound LLM: every op module's inputs and output in one forward, and any
op re-run on the reference's captured inputs (teacher-forced localization)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.lazy import nn, torch
from harness.models.llm_bind import forward, is_cache

OP_KINDS = {"input_layernorm": "norm", "self_attn": "attention", "post_attention_layernorm": "norm", "mlp": "mlp"}

OpName = str  # "model.layers.2.mlp"


@dataclass
class OpRecord:
    name: OpName
    layer: int
    kind: str  # attention | mlp | moe | norm
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor


def op_modules(model: nn.Module) -> list[tuple[OpName, int, str, nn.Module]]:
    """Each decoder layer's ops in execution order: (name, layer index, kind, module)."""
    found = []
    for i, layer in enumerate(model.model.layers):
        for attr, kind in OP_KINDS.items():
            module = getattr(layer, attr, None)
            if module is None:
                continue
            op_kind = "moe" if kind == "mlp" and hasattr(module, "experts") else kind
            found.append((f"model.layers.{i}.{attr}", i, op_kind, module))
    return found


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def capture(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[OpRecord], list[torch.Tensor]]:
    """One forward recording every op's inputs and output, and every decoder layer's output hidden state."""
    records: list[OpRecord] = []
    layer_out: list[torch.Tensor] = []
    handles = []
    for name, layer, kind, module in op_modules(model):

        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any, _n=name, _l=layer, _k=kind) -> None:
            records.append(OpRecord(_n, _l, _k, args, dict(kwargs), _first_tensor(output).detach()))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    for layer in model.model.layers:
        handles.append(layer.register_forward_hook(lambda m, a, out: layer_out.append(_first_tensor(out).detach())))
    try:
        logits = forward(model, input_ids)
    finally:
        for h in handles:
            h.remove()
    return logits, records, layer_out


def replay(model: nn.Module, record: OpRecord, to: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run the model's own op module `record.name` on the reference's inputs (moved by `to`)."""
    from harness.workload import map_tensors

    module = model.get_submodule(record.name)
    args = map_tensors(record.args, to)
    kwargs = map_tensors({k: v for k, v in record.kwargs.items() if not is_cache(v)}, to)
    with torch.no_grad():
        return _first_tensor(module(*args, **kwargs))
