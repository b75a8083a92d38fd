#!/usr/bin/env bash
# Every GPU check the open issues wait for (17, 18, 21, 22, 23), in priority order, for a session that is lent
# an H100 / H200 for 15 minutes of device time (machine start-up included: about 11 minutes of commands).
#
#   scripts/gpu_pending.sh [python] [first-step] [last-step]   (PYTHONPATH is set to this checkout and its faults/)
#
# The run tool allows 10 minutes a command: run it in two calls (results/cuda/README.md, "Pending"):
#   scripts/gpu_pending.sh python 1 4      # steps 1-4: at most 345 s
#   scripts/gpu_pending.sh python 5 10     # steps 5-10: at most 315 s
# Steps 11 and 12 (heavy float64 references on the host) only where device time is left after both.
#
# Check mode, on any CPU machine, in about a minute (make test runs it: tests/test_gpu_pending.py):
#   GPU_PENDING_CHECK=1 scripts/gpu_pending.sh [python] [first-step] [last-step]
# (GPU_PENDING_STEPS=1,6,7 picks steps by number instead: benchmarks/cuda_quant.sh and
# scripts/gpu_check_issue22.sh are such selections; GPU_PENDING_CHECK=list prints the selected commands.)
# runs each step's CPU stand-in instead (scripts/gpu_dryrun.py: harness commands parsed and planned with every
# workload reaching cases its backend supports, tests collected, benchmarks in their CPU form), so a typo, a shape
# name missing at its preset or a missing file fails here and not on the GPU. Exit 1 if any step fails.
#
# Each step has its own time limit (seconds) and writes under results/cuda/ with the command beside it
# (pending-*.txt); a failing or timed-out step is reported and the next one runs. Exit 3 at once where the
# python sees no GPU.
#   1 tests   cuda unit tests with the real kernels: side stream and cheat checks (23), fused MoE route /
#             permute in triton (22), quantized GEMM layouts (21)                                      120
#   2 self    harness selftest: the CUDA side-stream cheat caught, honest cuda timings valid (23)      80
#   3 calib   harness calibrate on this GPU (the TB/s and % of roof ceilings of step 4)                 40
#   4 attn    MLA absorbed decode and paged decode at real shapes beside plain decode (17)            105
#   5 ep      the expert-parallel MoE layer, world size 1 over nccl (18)                               40
#   6 bar     the MoE bar: three layers, each step timed beside the grouped GEMMs alone (22)          120
#   7 moeci   MoE parity of the ci suite on cuda (22: routing-aware verdicts unchanged)                 45
#   8 qtiny   w8a8 / fp8 / fp8-block parity on cuda at tiny shapes (21: a layout mistake shows first)  25
#   9 qmoe    the same beside bf16 on the Qwen3-30B-A3B-like MoE layer, real shape, timed (21)         55
#  10 qproj   the same on three real DeepSeek-V3 / Qwen3 projections (21)                              30
#  11 paper   MoE parity of the paper suite on cuda, bf16, real shapes (22)                           240
#  12 qheavy  the DeepSeek-V3-like MoE layer and the two largest projections quantized (21; 22 GB of
#             weights, float64 references on the host, --isolate so an out-of-memory kill costs a record) 420
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$(command -v python || command -v python3)}
FIRST=${2:-1}
LAST=${3:-99}
export PYTHONPATH="$PWD:$PWD/faults${PYTHONPATH:+:$PYTHONPATH}"
export HARNESS_CALIBRATION_DIR=${HARNESS_CALIBRATION_DIR:-$PWD/results/cuda}
RES=results/cuda
DEST=${GPU_PENDING_DEST:-}  # a folder that gets results/cuda as one .tgz after every step (the run tool's $OUT)
export PYTHONUNBUFFERED=1  # the logs fill as the steps print, also when a step is killed at its limit
CHECK=${GPU_PENDING_CHECK:-}
ONLY=${GPU_PENDING_STEPS:-}  # a comma list of step numbers instead of first..last (the wrappers' selections)
tag=${ONLY:-$FIRST-$LAST}
tag=${tag//,/-}
status=0
checks=$(mktemp)
trap 'rm -f "$checks"' EXIT

step() {  # step N NAME LIMIT_S COMMAND...: run it when selected, log the command, keep going on failure
  local n=$1 name=$2 limit=$3
  shift 3
  if [ -n "$ONLY" ]; then
    [[ ",$ONLY," == *",$n,"* ]] || return 0
  else
    [ "$n" -ge "$FIRST" ] && [ "$n" -le "$LAST" ] || return 0
  fi
  if [ -n "$CHECK" ]; then  # listed for the CPU stand-ins, all checked at the end in one process
    printf '%s %s' "$n" "$name" >> "$checks"
    printf ' %q' "$@" >> "$checks"
    echo >> "$checks"
    return 0
  fi
  echo "== step $n ($name), at most ${limit}s: $*" >&2
  echo "$*" >> "$RES/pending-commands.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$RES/pending-$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== step $n ($name): exit $rc" | tee -a "$RES/pending-$name.txt" >&2
  [ "$rc" = 0 ] || status=1
  # after every step, one file (the run tool brings back 8 at most): a call cut off at its limit keeps what ran
  [ -z "$DEST" ] || tar -czf "$DEST/gpu-pending-$tag.tgz" -C "$RES" .
}

if [ -z "$CHECK" ]; then  # without a GPU every step would only skip: stop before spending the limits
  probe='import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'
  if ! device=$("$PY" -c "$probe" 2>&1); then
    echo "gpu_pending: $PY sees no GPU, nothing run: ${device##*$'\n'}" >&2
    exit 3
  fi
  echo "# $(date -u +%FT%TZ) torch, CUDA, device: $device" >> "$RES/pending-commands.txt"
fi
harness=("$PY" -m harness.cli)
quant=(--preset real -b cuda --seeds 0 --distribution normal --time-budget 0.3 --dtype w8a8,fp8,fp8-block,bfloat16)
step 1 tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cheats_selftest.py tests/test_cuda.py \
  tests/test_cuda_moe_fused.py tests/test_cuda_quant.py tests/test_timing_checks.py
step 2 self 80 "${harness[@]}" selftest --faults harness_faults.cuda_checks --out "$RES/selftest.jsonl"
step 3 calib 40 "${harness[@]}" calibrate -b cuda --time-budget 0.3
step 4 attn 105 "${harness[@]}" run -b cuda --preset real --seeds 0 --distribution normal --dtype bfloat16 \
  -w attention.decode,attention.paged_decode,attention.mla_decode \
  --shape llama3-8b,mla-b32-s8k,mla-b64-s4k,mla-paged-bs64-b32-s8k --time-budget 0.5 --out "$RES/issue17.jsonl"
step 5 ep 40 "$PY" benchmarks/moe_ep.py --device cuda --backend cuda --preset small --out "$RES/moe_ep.json"
step 6 bar 120 "$PY" benchmarks/cuda_bar.py --only moe --time-budget 0.5 --out "$RES/bar-issue22.jsonl"
step 7 moeci 45 "${harness[@]}" run --suite ci -b cuda -w 'moe.*' --parity-only --out "$RES/issue22-parity-ci.jsonl"
step 8 qtiny 25 "${harness[@]}" run -w linear.projection,moe.layer --dtype w8a8,fp8,fp8-block --preset tiny -b cuda \
  --parity-only --seeds 0 --out "$RES/quant-tiny.jsonl"
step 9 qmoe 55 "${harness[@]}" run -w moe.layer "${quant[@]}" --shape qwen3-moe --out "$RES/quant.jsonl"
step 10 qproj 30 "${harness[@]}" run -w linear.projection "${quant[@]}" \
  --shape deepseek-v3-expert-gate,deepseek-v3-q-a,qwen3-30b-a3b-q --out "$RES/quant.jsonl"
step 11 paper 240 "${harness[@]}" run --suite paper -b cuda -w moe.layer,moe.experts --shape qwen3-moe,mixtral \
  --dtype bfloat16 --parity-only --out "$RES/issue22-parity-paper.jsonl"
step 12 qheavy 420 "${harness[@]}" run -w moe.layer,linear.projection "${quant[@]}" \
  --shape deepseek-v3,deepseek-v3-o,qwen3-32b-gate --isolate --out "$RES/quant.jsonl"
if [ "$CHECK" = list ]; then  # GPU_PENDING_CHECK=list: only the selected steps' commands, one a line
  cat "$checks"
elif [ -n "$CHECK" ]; then
  "$PY" scripts/gpu_dryrun.py --from "$checks" || status=1
fi
exit $status
