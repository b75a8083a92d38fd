"""Ctrl-C held back while a native library initializes.

A KeyboardInterrupt raised while a C++ extension module runs its init (seen: `import onnx`, whose pybind11 module
then calls std::terminate) aborts the whole process with SIGABRT instead of stopping the sweep after the case in
flight: the run ends as a crash (exit 3) instead of an interruption (exit 130) with its records kept. Code that
imports such a library first does it inside `deferred()`; the sweep's SIGINT handler (harness/launch.py) asks
`holding()` and, while it is true, only notes the Ctrl-C, which `deferred()` raises once the import is done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _Held:
    """Nested deferred() blocks in progress and whether a Ctrl-C came meanwhile (main thread only: signal
    handlers run there)."""

    depth = 0
    pending = False


def holding() -> bool:
    """True inside deferred(): a SIGINT handler should call `hold()` instead of raising."""
    return _Held.depth > 0


def pending() -> bool:
    """A held Ctrl-C waits: a second one means the user will not wait for the import."""
    return _Held.pending


def hold() -> None:
    """Note a Ctrl-C for deferred() to raise when its block ends."""
    _Held.pending = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block with Ctrl-C held (where the sweep's handler is installed), then raise it if one came."""
    _Held.depth += 1
    try:
        yield
    finally:  # also when the block raised (an import that failed): the Ctrl-C is not lost, nor left pending
        _Held.depth -= 1
        if _Held.depth == 0 and _Held.pending:
            _Held.pending = False
            raise KeyboardInterrupt  # chained to the block's own exception, if any
