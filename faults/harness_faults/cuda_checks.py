"""The CUDA block of the selftest alone (`harness selftest --faults harness_faults.cuda_checks`, on a GPU): the
side-stream cheat caught and the honest cuda timings valid. scripts/gpu_pending.sh runs it instead of the whole
selftest, whose CPU checks (proved by make test anywhere) take minutes of the host CPU while a GPU session's
15 minutes run."""

from __future__ import annotations

from harness_faults import checks

# the checks' backends whose device is cuda (tests/test_gpu_pending.py keeps this in step with checks.py)
CUDA_BACKENDS = ("cuda", "cheat-side-stream")
BACKENDS = checks.BACKENDS
CHECKS = tuple(c for c in checks.CHECKS if c.backend in CUDA_BACKENDS)
