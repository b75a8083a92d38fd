"""The Ascend adapter's quantized formats (a mixin of the adapter, so adapter.py stays one job): `w8a8` on the
torch_npu W8A8 ops, `fp8` / `fp8-block` refused (FP8 matmuls are Ascend 950 only, not A2 / A3).

The mapping (docs/ascend.md "Quantized ops (W8A8)"), as vllm-ascend runs W8A8 dynamic:
- weights: int8 per output channel by the harness's rule (harness.quant.quantize_weight: scale = amax / 127 in
  float32, round half to even), done here on each call as a port does it offline at load time;
- activations: `npu_dynamic_quant` per token, on the device (its own rounding: inv = 127 / rowmax, y =
  rint(x * inv), scale = 1 / inv; the harness divides by amax / 127: a rare one-quantum flip apart);
- `linear`: `npu_quant_matmul(q, W.t(), s_w float32, pertoken_scale=s_x, output_dtype=bfloat16)`;
- MoE experts: `npu_moe_init_routing_v2` -> `npu_dynamic_quant` -> int8 `npu_grouped_matmul(w13)` with the weight
  scale in bfloat16 (the gmm's per-token form takes a bfloat16 scale for a bfloat16 output) -> `npu_swiglu`
  (bfloat16) -> `npu_dynamic_quant` -> int8 `npu_grouped_matmul(w2)` -> `npu_moe_token_unpermute`.
Two roundings differ from the harness's emulation BY DESIGN, and a port to Ascend sees them too: the weight scale
rounded to bfloat16 in the grouped GEMMs (relative 2^-9 per output channel), and the [T*k, 2F] gate / up result
rounded to bfloat16 before SwiGLU and the second quantization (the emulation keeps it in float64). Measured on
the tiny and small MoE shapes they stay inside the w8a8 budget (the bfloat16 row); docs/ascend.md gives numbers.
"""

from __future__ import annotations

from typing import Any

from harness import quant
from harness.backend import Support
from harness.lazy import torch
from harness.op_types import Experts, QuantSpec, Routing, SharedExpert

FP8_REASON = (
    "FP8 matmuls are Ascend 950 only (torch_npu docs: on Atlas A2 / A3 npu_dynamic_quant outputs int8 / int4 and "
    "npu_quant_matmul takes int8); the adapter maps w8a8 only"
)
FP8_FORMATS = ("fp8", "fp8-block")
W8A8 = QuantSpec("w8a8")


def int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [..., N, K] -> (int8 [..., N, K], float32 scale [..., N]): per output channel, the harness's rule."""
    wq = quant.quantize_weight(w, W8A8)
    return wq.q, wq.scale.squeeze(-1)


class AscendQuantOps:
    """`linear` and `quant_experts` of the Ascend adapter in w8a8; fp8 formats are a skip with FP8_REASON."""

    tnpu: Any
    _details: dict[str, Any]

    def supports(self, case: Any) -> Support:
        if case.dtype in FP8_FORMATS:
            return Support(False, f"{case.dtype}: {FP8_REASON}")
        return super().supports(case)  # type: ignore[misc]

    def linear(self, x: torch.Tensor, w: torch.Tensor, *, quant: QuantSpec | None = None) -> torch.Tensor:
        """x [T, K] @ w [N, K]^T; w8a8 through npu_dynamic_quant + npu_quant_matmul (per-token x per-channel)."""
        if quant is None:
            return super().linear(x, w)  # type: ignore[misc]
        self._require_w8a8(quant)
        q, s_x = self.tnpu.npu_dynamic_quant(x)  # [T, K] int8, [T] float32
        wq, s_w = int8_weight(w)  # [N, K] int8, [N] float32
        self._details["quant"] = {"path": "npu_dynamic_quant -> npu_quant_matmul (pertoken_scale, bfloat16 out)"}
        return self.tnpu.npu_quant_matmul(q, wq.t(), s_w, pertoken_scale=s_x, output_dtype=torch.bfloat16)

    def quant_experts(
        self, x: torch.Tensor, experts: Experts, routing: Routing, shared: SharedExpert | None, quant: QuantSpec
    ) -> torch.Tensor:
        """The W8A8 MoE after routing, vllm-ascend's order: [T, H] bfloat16."""
        self._require_w8a8(quant)
        tnpu = self.tnpu
        T, E = x.shape[0], experts.w_gate.shape[0]
        expanded, row_idx, counts, _ = tnpu.npu_moe_init_routing_v2(
            x,
            routing.ids.to(torch.int32),
            active_num=T * routing.ids.shape[1],
            expert_num=E,
            expert_tokens_num_type=1,
            expert_tokens_num_flag=True,
        )  # expanded [T*k, H] grouped by expert, counts [E] int64
        w13, s13 = int8_weight(torch.cat([experts.w_gate, experts.w_up], dim=1))  # [E, 2F, H], [E, 2F]
        w2, s2 = int8_weight(experts.w_down)  # [E, H, F], [E, H]
        common = {"group_list": counts, "split_item": 2, "group_type": 0, "group_list_type": 1}
        q, s = tnpu.npu_dynamic_quant(expanded)  # [T*k, H] int8, [T*k]
        h = tnpu.npu_grouped_matmul(
            [q], [w13.transpose(1, 2)], scale=[s13.to(torch.bfloat16)], per_token_scale=[s],
            output_dtype=torch.bfloat16, **common,
        )[0]  # fmt: skip  # [T*k, 2F] bfloat16
        q, s = tnpu.npu_dynamic_quant(tnpu.npu_swiglu(h, dim=-1))  # [T*k, F] int8, [T*k]
        y = tnpu.npu_grouped_matmul(
            [q], [w2.transpose(1, 2)], scale=[s2.to(torch.bfloat16)], per_token_scale=[s],
            output_dtype=torch.bfloat16, **common,
        )[0]  # fmt: skip  # [T*k, H] bfloat16
        out = tnpu.npu_moe_token_unpermute(y, row_idx, probs=routing.weights.to(y.dtype))  # [T, H]
        self._details["quant"] = {
            "path": "npu_dynamic_quant -> npu_grouped_matmul int8 (w13) -> npu_swiglu -> npu_dynamic_quant -> "
            "npu_grouped_matmul int8 (w2) -> npu_moe_token_unpermute",
            "weight_scale": "bfloat16",
        }
        if shared is not None:
            out = (out.float() + shared.apply(x, self._quant_mlp).float()).to(x.dtype)
        return out

    def _quant_mlp(self, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> Any:
        """The shared expert's SwiGLU MLP in w8a8: x quantized once, gate / up / down on npu_quant_matmul: [T, H]."""
        tnpu = self.tnpu
        q, s_x = tnpu.npu_dynamic_quant(x)  # [T, H] int8, [T]
        w13, s13 = int8_weight(torch.cat([w_gate, w_up], dim=0))  # [2Fs, H], [2Fs]
        h = tnpu.npu_quant_matmul(q, w13.t(), s13, pertoken_scale=s_x, output_dtype=torch.bfloat16)  # [T, 2Fs]
        q, s_h = tnpu.npu_dynamic_quant(tnpu.npu_swiglu(h, dim=-1))  # [T, Fs] int8, [T]
        wd, s_d = int8_weight(w_down)  # [H, Fs], [H]
        return tnpu.npu_quant_matmul(q, wd.t(), s_d, pertoken_scale=s_h, output_dtype=torch.bfloat16)

    def _require_w8a8(self, quant: QuantSpec) -> None:
        if quant.format != "w8a8":
            raise NotImplementedError(f"{quant.format}: {FP8_REASON}")
