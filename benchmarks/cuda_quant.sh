#!/usr/bin/env bash
# The quantized formats on one NVIDIA GPU (issue 21, deliverable 5): prepared on a CPU machine, NOT yet run.
#
#   bash benchmarks/cuda_quant.sh [OUT]        (default OUT=results/cuda/quant.jsonl; PYTHONPATH=. in a checkout)
#
# 1. A parity smoke on tiny shapes first (seconds): every format on `cuda` against its float64 emulation, so a
#    layout mistake in backends/cuda/quant.py shows up before the long run. The records' implementation.quant
#    says which GEMM ran (torch._int_mm, _scaled_mm tensorwise / blockwise, or the fp8-block fallback and why).
# 2. The real shapes: the plain projections (DeepSeek-V3, Qwen3) and the MoE layer at the Qwen3-30B-A3B-like and
#    DeepSeek-V3-like shapes in w8a8, fp8, fp8-block and bfloat16 side by side (TFLOP/s in the report). One seed,
#    normal inputs: the float64 reference of a real DeepSeek-V3 layer runs on the host CPU and dominates the time;
#    its inputs (256 experts, about 22 GB of bf16 weights) and float64 copies need a big host: --isolate, so an
#    out-of-memory kill costs that one record (the 2-core CPU machine it was written on was OOM-killed generating them).
set -euo pipefail
OUT=${1:-results/cuda/quant.jsonl}
harness=(python -m harness.cli)
"${harness[@]}" run -w linear.projection,moe.layer --dtype w8a8,fp8,fp8-block --preset tiny -b cuda \
  --parity-only --seeds 0 --out "${OUT%.jsonl}-tiny.jsonl"
"${harness[@]}" run -w linear.projection,moe.layer --shape deepseek-v3,deepseek-v3-expert-gate,deepseek-v3-o,deepseek-v3-q-a,qwen3-30b-a3b-q,qwen3-32b-gate,qwen3-moe \
  --dtype w8a8,fp8,fp8-block,bfloat16 --preset real -b cuda --seeds 0 --distribution normal \
  --time-budget 0.5 --isolate --out "$OUT"
"${harness[@]}" report "$OUT"
