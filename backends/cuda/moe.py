"""A MoE layer on grouped GEMMs: expert weights laid out once, routing and combine free of host syncs.

The straightforward layer (torch-cpu's: a loop over experts, `index_add_` into a float32 buffer) is dominated on a
GPU by everything but its GEMMs (the anchors: the combine alone costs more than both GEMMs). Here:
- gate and up projections of all experts are concatenated once per weight set into [E, 2F, H] (kept while the
  weights live), so each token slot needs one grouped GEMM for both, and `torch._grouped_mm` reads the weights in
  their stored layout (transposed views, no copy per call);
- routing and permutation take two Triton kernels on CUDA (moe_route.py, moe_route_kernels.py): top-k (softmax,
  or DeepSeek-V3's grouped sigmoid with bias) fused with the per-expert counting and each slot's place in expert
  order, then one pass that scatters token rows into that order (the gather of the first grouped GEMM's input:
  `_grouped_mm` takes no row index, so it cannot read x itself). The torch form (stable sort, searchsorted) gives
  the same ids, offsets and order; neither syncs with the host, so the layer can be captured into a CUDA graph;
- SwiGLU and the combine are one fused Triton kernel each on CUDA (fused.py), reading the activations once; the
  combine needs no atomics: each token has exactly k slots, read back in token order and summed in float32;
- the shared expert runs on a side stream (CUDA), overlapping the routed experts, joined before the sum.
Where `_grouped_mm` refuses a dtype or device, the same layout runs a loop over experts (with a host sync) and
`path` says so.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from harness.backends.cuda import moe_route
from harness.backends.cuda.fused import combine_rows, swiglu_rows
from harness.backends.cuda.memo import TensorMemo
from harness.op_types import Routing, RoutingSpec, SharedExpert

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
        self.use_triton = True  # fused route / permute / swiglu / combine where triton and CUDA are there
        self.interpret = False  # tests: the kernels on CPU tensors under TRITON_INTERPRET=1
        self.overlap_shared = True  # the shared expert on a side stream (CUDA only)
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}

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
        fused = self._fused(x, E)
        return self._run(x, (w_gate, w_up, w_down), moe_route.given(routing, x, E, fused), shared, fused)

    def routed_layer(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        spec: RoutingSpec,
        *,
        bias: torch.Tensor | None = None,
        shared: SharedExpert | None = None,
    ) -> tuple[torch.Tensor, Routing]:
        """The layer routing on its own [T, E] `logits` (any float dtype; scored in float32): (out, Routing)."""
        fused = self._fused(x, weights[0].shape[0])
        routed = moe_route.route(logits, spec, bias, fused)
        return self._run(x, weights, routed, shared, fused), routed.routing(torch.float32)

    def _fused(self, x: torch.Tensor, num_experts: int) -> bool:
        return self.use_triton and moe_route.kernels_usable(x, num_experts, interpret=self.interpret)

    def _run(
        self,
        x: torch.Tensor,
        weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        routed: moe_route.Routed,
        shared: SharedExpert | None,
        fused: bool,
    ) -> torch.Tensor:
        """Permute, grouped GEMM, SwiGLU, grouped GEMM, combine; the shared expert beside them: [T, H]."""
        E = weights[0].shape[0]
        layout = self.layout(*weights, shared)
        shared_out = self._shared_start(x, layout, shared, fused)
        perm = moe_route.permute(x, routed, E)  # token rows in expert order, group ends, each slot's row
        h = self._grouped(perm.xs, layout.w13, perm.offs)  # [T*k, 2F]
        a = swiglu_rows(h, layout.f, fused)  # [T*k, F]
        y = self._grouped(a, layout.w2, perm.offs)  # [T*k, H], expert order
        out = combine_rows(y, perm.slot_of, routed.weights, torch.float32 if shared is not None else x.dtype, fused)
        steps = "triton route/permute/swiglu/combine" if fused else ""
        if shared_out is not None:
            out = (out + self._shared_join(shared_out).float()).to(x.dtype)
            steps += ", shared expert on a side stream" if x.is_cuda and self.overlap_shared else ""
        self.path = self._gemm_path + (f" + {steps.lstrip(', ')}" if steps else "")
        return out

    def _shared_start(
        self, x: torch.Tensor, layout: ExpertLayout, shared: SharedExpert | None, fused: bool
    ) -> torch.Tensor | None:
        """The shared expert's output, launched on a side stream on CUDA so it overlaps the routed experts."""
        if shared is None:
            return None
        mlp = functools.partial(_laid_out_mlp, layout, fused)
        if not (x.is_cuda and self.overlap_shared):
            return shared.apply(x, mlp)
        side = self._side_streams.get(x.device)
        if side is None:
            side = self._side_streams[x.device] = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))  # x and the weights are ready on the caller's stream
        with torch.cuda.stream(side):
            return shared.apply(x, mlp)

    def _shared_join(self, shared_out: torch.Tensor) -> torch.Tensor:
        """Make the caller's stream wait for the side stream (also inside a CUDA graph capture)."""
        if shared_out.is_cuda and self.overlap_shared:
            main = torch.cuda.current_stream(shared_out.device)
            main.wait_stream(self._side_streams[shared_out.device])
            shared_out.record_stream(main)  # freed on the caller's stream, not reused early by the side stream
        return shared_out

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
