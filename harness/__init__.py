"""harness: backend-agnostic inference parity and benchmark harness.

Importing the package does nothing but define names; backends and workloads are found through the entry-point
groups `harness.backends` and `harness.workloads` when a registry is built.
"""

__version__ = "0.1.0"
