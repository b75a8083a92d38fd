"""harness: backend-agnostic inference parity and benchmark harness.

Importing the package does nothing but define names; backends and workloads are found through the entry-point
groups `harness.backends` and `harness.workloads` when a registry is built.

The checkout's `backends/` and `models/` folders install as `harness.backends` and `harness.models` (pyproject's
package-dir). Run from a checkout that is not installed (`PYTHONPATH=.`), the package path also lists the checkout,
so the same names resolve there.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "backends" / "__init__.py").is_file():
    __path__.append(str(_checkout))
