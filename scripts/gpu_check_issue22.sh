#!/usr/bin/env bash
# Issue 22 in one go on a GPU (H100 / H200, triton installed): the cuda tests with the real kernels, MoE parity of
# the ci and paper suites on `cuda`, and the MoE bar (three layers, each step timed) into results/cuda/.
# Usage: scripts/gpu_check_issue22.sh [python]   (about 5-8 minutes on an H100; DeepSeek-V3's experts are 22 GB)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
export PYTHONPATH="$PWD:$PWD/faults${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() { echo "== $*" >&2; }

step "cuda tests (fused route/permute kernels compiled, graph capture with the side-stream shared expert)"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cuda_moe_fused.py -rs || status=1

step "MoE parity on cuda: ci suite (routing-aware verdicts), then the paper suite's MoE layers"
$PY -m harness.cli run --suite ci -b cuda -w 'moe.*' --parity-only --out results/cuda/issue22-parity-ci.jsonl || status=1
$PY -m harness.cli run --suite paper -b cuda -w 'moe.*' --parity-only --out results/cuda/issue22-parity-paper.jsonl \
    || status=1

step "the MoE bar: Qwen3-30B-A3B-like, DeepSeek-V3-like, Mixtral-like; layer vs its grouped GEMMs alone"
$PY benchmarks/cuda_bar.py --only moe --out results/cuda/bar-issue22.jsonl | tee results/cuda/bar-issue22.txt
bar=${PIPESTATUS[0]}
echo "bar: $([ "$bar" = 0 ] && echo PASS || echo "FAIL (exit $bar)")  (qwen3 >= 80%, deepseek-v3 >= 70%, mixtral >= 84% of their GEMMs)"
[ "$bar" = 0 ] || status=1
echo "command: scripts/gpu_check_issue22.sh $PY" >> results/cuda/bar-issue22.txt
exit $status
