"""What a run is doing right now, for the progress display: slow phases inside a case (an ONNX export, a session
build) are announced by whoever does them, and shown with the case in flight.

Announcing costs nothing when nobody listens (a library call, a test, an isolated child): `phase` looks up the
current listener, which the CLI installs for the duration of a run with `listening`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str], None]

_listener: ContextVar[Listener | None] = ContextVar("harness_progress_listener", default=None)


def phase(text: str) -> None:
    """Announce a slow step now under way, e.g. "exporting the attention graph (float16)"."""
    listener = _listener.get()
    if listener is not None:
        listener(text)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the phases announced inside this block to `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
