"""The names and defaults people type on the command line and in suite files.

Kept free of torch and of every other heavy import, so that `harness --help` and argument checking start in a
fraction of a second; the modules that compute import their vocabulary from here.
"""

from __future__ import annotations

DTYPE_NAMES = ("float64", "float32", "bfloat16", "float16")  # case dtypes (harness.backend.DTYPES maps them)
DISTRIBUTIONS = ("normal", "stress")  # input distributions
REPORT_FORMATS = ("md", "csv", "latex", "html")
DEFAULT_AGAINST_RATIO = 2.0  # --against: a candidate may have at most this multiple of the baseline's error


class BadInputError(ValueError):
    """Input the user gave that cannot be used (an unknown name, a malformed file): the CLI exits 2 with the
    message, no traceback. Every such error of the harness derives from this one class."""
