#!/usr/bin/env bash
# The quantized formats on one NVIDIA GPU (issue 21, deliverable 5): prepared on a CPU machine, NOT yet run.
# Steps 8, 9, 10 and 12 of scripts/gpu_pending.sh (their commands and time limits live there, checked by make test):
#
#   bash benchmarks/cuda_quant.sh [python]                   # writes results/cuda/quant-tiny.jsonl, quant.jsonl
#   GPU_PENDING_CHECK=1 bash benchmarks/cuda_quant.sh        # CPU: each command parsed and planned
#
# 8. A parity smoke on tiny shapes first (seconds): every format on `cuda` against its float64 emulation, so a
#    layout mistake in backends/cuda/quant.py shows up before the long run. The records' implementation.quant
#    says which GEMM ran (torch._int_mm, _scaled_mm tensorwise / blockwise, or the fp8-block fallback and why).
# 9, 10. The real shapes: the Qwen3-30B-A3B-like MoE layer and three DeepSeek-V3 / Qwen3 projections in w8a8,
#    fp8, fp8-block and bfloat16 side by side (TFLOP/s in `harness report results/cuda/quant.jsonl`).
# 12. The DeepSeek-V3-like MoE layer and the two largest projections the same way: their float64 references run
#    on the host CPU and dominate the time; the layer's inputs (256 experts, about 22 GB of bf16 weights) and
#    float64 copies need a big host: --isolate, so an out-of-memory kill costs that one record.
exec env GPU_PENDING_STEPS=8,9,10,12 bash "$(dirname "$0")/../scripts/gpu_pending.sh" "$@"
