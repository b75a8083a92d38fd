"""The fault plugin of `harness selftest`: planted porting mistakes and correct-but-different implementations
(backends.py) with what the selftest expects of each (checks.py). Not part of the harness package: install with
`pip install --no-deps -e faults/` (make setup does)."""
