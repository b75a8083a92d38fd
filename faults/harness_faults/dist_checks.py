"""The distributed block of the selftest alone (`harness selftest --faults harness_faults.dist_checks`, under
torchrun with 2+ ranks): checks.py's DIST_CHECKS and the backends they run."""

from __future__ import annotations

from pathlib import Path

from harness_faults.checks import DIST_CHECKS

BACKENDS = str(Path(__file__).with_name("dist_faults.py"))
CHECKS = DIST_CHECKS
