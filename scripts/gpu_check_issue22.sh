#!/usr/bin/env bash
# Issue 22 on a GPU (H100 / H200, triton installed): steps 1, 6, 7 and 11 of scripts/gpu_pending.sh (their
# commands and time limits live there, checked by make test): the cuda tests with the real kernels (fused
# route / permute compiled, graph capture with the side-stream shared expert), the MoE bar (Qwen3-30B-A3B-,
# DeepSeek-V3- and Mixtral-like layers beside their grouped GEMMs alone, each step timed: bar-issue22.jsonl,
# printed in pending-bar.txt; exit 1 when a bar is missed), MoE parity of the ci suite and of the paper suite's
# MoE layers on `cuda`, all under results/cuda/.
#
#   scripts/gpu_check_issue22.sh [python]                    # about 7 minutes at most
#   GPU_PENDING_CHECK=1 scripts/gpu_check_issue22.sh         # CPU: each command's stand-in
exec env GPU_PENDING_STEPS=1,6,7,11 bash "$(dirname "$0")/gpu_pending.sh" "$@"
