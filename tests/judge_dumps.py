"""Makes REAL msprobe dumps for tests/test_judge.py: `python tests/judge_dumps.py SCENARIO DUMP_PATH [INPUTS]`.

Run in a subprocess per dump: msprobe patches torch's APIs process-wide while it dumps. Scenarios:
- torch, torch-fault: the torch-cpu backend's attention (explicit mask, GQA) and SwiGLU at level "mix" (API
  calls and modules), an nn.RMSNorm and an nn.Linear module, and torch.erf (no contract op). torch-fault plants
  a broken SDPA kernel (it ignores the mask) under torch's own name, before msprobe hooks it.
- sim, sim-fault: the ascend-sim backend's attention (npu_fused_infer_attention_score, bfloat16) and MoE layer
  (gating top-k, init routing, grouped matmul, swiglu, unpermute). The simulator's npu_* functions are plain
  Python, which msprobe does not hook by itself: they are registered with PrecisionDebugger.register_custom_api
  under the prefix "NPU", so the dump names them as a torch_npu run's dump does (NPU.npu_swiglu.0.forward).
  sim-fault plants a SwiGLU kernel with its halves swapped.
- attention INPUTS: torch-cpu's attention on a `harness run --save-outputs` case's inputs (INPUTS = its folder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from msprobe.pytorch import PrecisionDebugger

from harness.backend import default_registry
from harness.op_types import RoutingSpec

NPU_APIS = (
    "npu_fused_infer_attention_score",
    "npu_fusion_attention",
    "npu_moe_gating_top_k_softmax",
    "npu_moe_gating_top_k",
    "npu_moe_init_routing_v2",
    "npu_grouped_matmul",
    "npu_swiglu",
    "npu_moe_token_unpermute",
    "npu_rms_norm",
)


def debugger(dump_path: Path, level: str) -> PrecisionDebugger:
    config = {
        "task": "tensor",
        "dump_path": str(dump_path),
        "rank": [],
        "step": [],
        "level": level,
        "tensor": {"scope": [], "list": [], "data_mode": ["all"]},
    }
    path = dump_path.parent / f"{dump_path.name}.config.json"
    path.write_text(json.dumps(config))
    return PrecisionDebugger(config_path=str(path))


def broken_sdpa(original):
    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return original(q, k, v, None, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)  # mask dropped

    return sdpa


def torch_model(dump_path: Path, fault: bool) -> None:
    if fault:
        torch.nn.functional.scaled_dot_product_attention = broken_sdpa(torch.nn.functional.scaled_dot_product_attention)
    backend = default_registry().create("torch-cpu")
    norm, proj = torch.nn.RMSNorm(32, eps=1e-6), torch.nn.Linear(32, 64, bias=False)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.1)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 16, generator=gen)  # [B, Hq, Sq, D]: 6 new tokens after 4 cached
    k, v = torch.randn(2, 2, 10, 16, generator=gen), torch.randn(2, 2, 10, 16, generator=gen)
    x = torch.randn(5, 32, generator=gen)
    model = torch.nn.ModuleDict({"norm": norm, "proj": proj})
    dbg = debugger(dump_path, "mix")
    dbg.start(model)
    with torch.no_grad():
        backend.attention(q, k, v, causal=True)  # Sq < Skv: an explicit bottom-right mask
        backend.swiglu(proj(norm(x)))
        torch.erf(x)
    dbg.stop()
    dbg.step()


def swapped_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    a, b = x.float().chunk(2, dim=dim)
    return (torch.nn.functional.silu(b) * a).to(x.dtype)  # the halves swapped


def sim_model(dump_path: Path, fault: bool) -> None:
    from harness.backends.ascend import sim

    if fault:
        sim.npu_swiglu = swapped_swiglu
    backend = default_registry().create("ascend-sim")
    gen = torch.Generator().manual_seed(1)
    bf = torch.bfloat16
    q = torch.randn(2, 4, 3, 16, generator=gen).to(bf)
    k, v = torch.randn(2, 2, 8, 16, generator=gen).to(bf), torch.randn(2, 2, 8, 16, generator=gen).to(bf)
    T, H, F, E = 6, 16, 8, 4
    x = torch.randn(T, H, generator=gen)
    router = torch.randn(E, H, generator=gen) * 0.5
    w_gate, w_up = torch.randn(E, F, H, generator=gen) * 0.3, torch.randn(E, F, H, generator=gen) * 0.3
    w_down = torch.randn(E, H, F, generator=gen) * 0.3
    dbg = debugger(dump_path, "L1")
    for api in NPU_APIS:
        PrecisionDebugger.register_custom_api(sim, api, "NPU")
    dbg.start()
    backend.attention(q, k, v, causal=True)
    backend.moe(x, router, w_gate, w_up, w_down, RoutingSpec(top_k=2, scheme="softmax_topk", renormalize=True))
    dbg.stop()
    dbg.step()


def attention_case(dump_path: Path, inputs_dir: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(inputs_dir / "inputs.safetensors"))
    dims = json.loads((inputs_dir / "dims.json").read_text())
    backend = default_registry().create("torch-cpu")
    dbg = debugger(dump_path, "L1")
    dbg.start()
    backend.attention(
        tensors["q"],
        tensors["k"],
        tensors["v"],
        causal=dims["causal"],
        window=dims["window"],
        kv_lens=tensors.get("kv_lens"),
    )
    dbg.stop()
    dbg.step()


if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    if scenario in ("torch", "torch-fault"):
        torch_model(out, scenario == "torch-fault")
    elif scenario in ("sim", "sim-fault"):
        sim_model(out, scenario == "sim-fault")
    elif scenario == "attention":
        attention_case(out, Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
