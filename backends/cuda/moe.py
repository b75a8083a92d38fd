"""A MoE layer on grouped GEMMs: expert weights laid out once, routing and combine free of host syncs.

The straightforward layer (torch-cpu's: a loop over experts, `index_add_` into a float32 buffer) is dominated on a
GPU by everything but its GEMMs (the anchors: the combine alone costs more than both GEMMs). Here:
- gate and up projections of all experts are concatenated once per weight set into [E, 2F, H] (kept while the
  weights live), so each token slot needs one grouped GEMM for both, and `torch._grouped_mm` reads the weights in
  their stored layout (transposed views, no copy per call);
- slots are sorted by expert on the device (stable argsort, bincount, cumsum -> group offsets): no `.tolist()`,
  so the layer can be captured into a CUDA graph;
- SwiGLU and the combine are one fused Triton kernel each on CUDA (fused.py), reading the activations once; the
  combine needs no atomics: each token has exactly k slots, read back in token order and summed in float32.
Where `_grouped_mm` refuses a dtype or device, the same layout runs a loop over experts (with a host sync) and
`path` says so.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from harness.backends.cuda.fused import combine_rows, swiglu_rows, triton_usable
from harness.backends.cuda.memo import TensorMemo
from harness.op_types import Routing, SharedExpert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertLayout:
    """Expert weights as the grouped GEMMs read them."""

    w13: torch.Tensor  # [E, H, 2F]: cat(gate, up) over F, transposed view (column-major per expert)
    w2: torch.Tensor  # [E, F, H]: w_down transposed view
    f: int
    shared13: torch.Tensor | None  # [H, 2Fs]: cat(shared gate, shared up), transposed view
    shared2: torch.Tensor | None  # [Fs, H]


def _laid_out_mlp(layout: ExpertLayout, fused: bool, x: torch.Tensor, *_weights: torch.Tensor) -> torch.Tensor:
    """The shared expert's SwiGLU MLP on its laid-out weights (gate and up in one GEMM): [T, H]."""
    assert layout.shared13 is not None and layout.shared2 is not None  # laid out with the shared expert
    return swiglu_rows(x @ layout.shared13, layout.shared2.shape[0], fused) @ layout.shared2  # [T, 2Fs] -> [T, H]


class GroupedMoe:
    """Contract `moe` through grouped GEMMs; `path` names what the last call ran."""

    def __init__(self) -> None:
        self._layouts: TensorMemo[tuple[tuple, ExpertLayout]] = TensorMemo()
        self.grouped_error: dict[tuple, str] = {}  # (dtype, device type) -> why _grouped_mm was refused
        self.path = ""
        self._gemm_path = ""
        self.use_triton = True  # fused swiglu / combine where triton and CUDA are there

    def layout(
        self, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, shared: SharedExpert | None
    ) -> ExpertLayout:
        """The grouped layout of these weights, built on first sight and kept while `w_gate` lives."""
        stamp = (id(w_up), w_up._version, id(w_down), w_down._version, id(shared))
        cached = self._layouts.get(w_gate)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        w13 = torch.cat([w_gate, w_up], dim=1).transpose(1, 2)  # [E, 2F, H] stored -> [E, H, 2F] view
        shared13 = shared2 = None
        if shared is not None:
            shared13 = torch.cat([shared.w_gate, shared.w_up], dim=0).T  # [2Fs, H] stored -> [H, 2Fs] view
            shared2 = shared.w_down.T  # [H, Fs] stored -> [Fs, H] view
        layout = ExpertLayout(w13, w_down.transpose(1, 2), w_gate.shape[1], shared13, shared2)
        self._layouts.put(w_gate, (stamp, layout))
        return layout

    def __call__(
        self,
        x: torch.Tensor,
        w_gate: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        routing: Routing,
        *,
        shared: SharedExpert | None = None,
    ) -> torch.Tensor:
        """The layer under `routing` (chosen by the caller): [T, H] in the dtype of x."""
        E = w_gate.shape[0]
        layout = self.layout(w_gate, w_up, w_down, shared)
        weights, ids = routing.weights.float(), routing.ids.long()  # [T, k]
        k = ids.shape[1]
        fused = self.use_triton and triton_usable(x)
        flat = ids.reshape(-1)  # [T*k] expert of slot t*k + j
        sorted_ids, order = torch.sort(flat, stable=True)  # [T*k] slots grouped by expert
        experts = torch.arange(E, device=x.device, dtype=sorted_ids.dtype)
        offs = torch.searchsorted(sorted_ids, experts, right=True).to(torch.int32)  # [E] group ends; no host sync
        xs = x.index_select(0, order // k)  # [T*k, H] token rows in expert order
        h = self._grouped(xs, layout.w13, offs)  # [T*k, 2F]
        a = swiglu_rows(h, layout.f, fused)  # [T*k, F]
        y = self._grouped(a, layout.w2, offs)  # [T*k, H], expert order
        slot_of = torch.empty_like(order)
        slot_of[order] = torch.arange(order.numel(), device=order.device)  # inverse permutation
        out = combine_rows(y, slot_of, weights, torch.float32 if shared is not None else x.dtype, fused)
        if shared is not None:
            out = (out + shared.apply(x, functools.partial(_laid_out_mlp, layout, fused)).float()).to(x.dtype)
        self.path = self._gemm_path + (" + triton swiglu/combine" if fused else "")
        return out

    def _grouped(self, a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """[M, K] x [E, K, N] with rows of group e in offs[e-1]:offs[e] -> [M, N]."""
        where = (a.dtype, a.device.type)
        if where not in self.grouped_error and hasattr(torch, "_grouped_mm"):
            try:
                out = torch._grouped_mm(a, b, offs=offs)
                self._gemm_path = "grouped_mm"
                return out
            except RuntimeError as exc:
                if a.is_cuda and torch.cuda.is_current_stream_capturing():
                    raise  # not a refusal: this dtype's grouped GEMM syncs with the host, so the graph capture fails
                self.grouped_error[where] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                log.info("torch._grouped_mm refused %s on %s (%s); looping over experts", *where, exc)
        self._gemm_path = f"expert_loop (_grouped_mm: {self.grouped_error.get(where, 'absent')})"
        out = a.new_empty(a.shape[0], b.shape[2])  # [M, N]
        start = 0
        for e, end in enumerate(offs.tolist()):
            if end > start:
                out[start:end] = a[start:end] @ b[e]
            start = end
        return out
