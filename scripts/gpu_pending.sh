#!/usr/bin/env bash
# Every GPU check the open issues wait for (14, 17, 18, 21, 22, 23), in priority order, for a session that is lent
# an H100 / H200 with its 15 minutes of device time. Prepared on a CPU machine: NOT yet run.
#
#   scripts/gpu_pending.sh [python] [first-step]     (PYTHONPATH is set to this checkout and its faults/)
#
# Each step has its own time limit and writes under results/cuda/ with the command beside it (pending-*.txt);
# a failing or timed-out step is reported and the next one runs. Steps (rough H100 minutes):
#   1 tests   cuda unit tests with the real kernels: fused MoE route/permute (triton), quantized GEMMs, the
#             side-stream and cheat checks (issues 14, 21, 22, 23)                                     ~2
#   2 self    harness selftest: the CUDA side-stream cheat caught, honest cuda timings valid (issue 23)  ~1
#   3 attn    MLA absorbed decode and paged decode at real shapes beside plain decode, TB/s against the
#             calibrated copy ceiling (issue 17)                                                        ~3
#   4 ep      the expert-parallel MoE layer, world size 1 over nccl (issue 18)                          ~1
#   5 moe     the MoE bar: three layers, each step timed beside the grouped GEMMs alone (issue 22)      ~3
#   6 quant   w8a8 / fp8 / fp8-block projections and MoE layers beside bf16 (issue 21)                ~4+
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
FIRST=${2:-1}
export PYTHONPATH="$PWD:$PWD/faults${PYTHONPATH:+:$PYTHONPATH}"
export HARNESS_CALIBRATION_DIR=${HARNESS_CALIBRATION_DIR:-$PWD/results/cuda}
OUT=results/cuda
status=0

step() {  # step N NAME LIMIT_S COMMAND...: run it when N >= FIRST, log the command, keep going on failure
  local n=$1 name=$2 limit=$3
  shift 3
  [ "$n" -ge "$FIRST" ] || return 0
  echo "== step $n ($name), at most ${limit}s: $*" >&2
  echo "$*" >> "$OUT/pending-commands.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/pending-$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== step $n ($name): exit $rc" | tee -a "$OUT/pending-$name.txt" >&2
  [ "$rc" = 0 ] || status=1
}

harness=("$PY" -m harness.cli)
step 1 tests 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_cuda_moe_fused.py \
  tests/test_cuda_quant.py tests/test_cheats_selftest.py tests/test_timing_checks.py
step 2 self 180 "${harness[@]}" selftest
step 3 attn 300 "${harness[@]}" run -b cuda --preset real --seeds 0 --distribution normal --dtype bfloat16 \
  -w attention.decode,attention.paged_decode,attention.mla_decode \
  --shape llama3-8b,mla-b32-s8k,mla-b64-s4k,mla-paged-bs64-b32-s8k --time-budget 0.5 --out "$OUT/issue17.jsonl"
step 4 ep 120 "$PY" benchmarks/moe_ep.py --device cuda --backend cuda --preset small --out "$OUT/moe_ep.json"
step 5 moe 360 scripts/gpu_check_issue22.sh "$PY"
step 6 quant 420 bash benchmarks/cuda_quant.sh "$OUT/quant.jsonl"
exit $status
