"""A Ctrl-C that arrives while a native library initializes (`import onnx` aborts the process with SIGABRT on a
KeyboardInterrupt inside its pybind11 init) is held and raised once the import is done, so the run ends as an
interruption (exit 130, records kept), not as a crash (exit 3)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness import interrupts
from harness.launch import _InterruptFlag


def _ctrl_c_now() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the handler runs between bytecodes of this loop
        time.sleep(0.001)
        if interrupts._Held.pending:
            return


def test_a_ctrl_c_during_a_native_import_is_raised_after_it() -> None:
    finished = False
    with _InterruptFlag() as flag, pytest.raises(KeyboardInterrupt), interrupts.deferred():
        _ctrl_c_now()  # stands for `import onnx`: the block must run to its end
        finished = True
    assert finished and flag.seen and not interrupts.holding()


def test_outside_a_deferred_block_a_ctrl_c_interrupts_at_once() -> None:
    finished = False
    with _InterruptFlag(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        finished = True
    assert not finished


def test_a_block_without_a_ctrl_c_raises_nothing() -> None:
    with _InterruptFlag(), interrupts.deferred():
        pass
    assert not interrupts._Held.pending


def test_a_ctrl_c_held_while_the_import_fails_is_raised_and_not_left_pending() -> None:
    with _InterruptFlag(), pytest.raises(KeyboardInterrupt) as raised, interrupts.deferred():
        _ctrl_c_now()
        import harness_no_such_module  # noqa: F401
    assert isinstance(raised.value.__context__, ImportError)
    assert not interrupts._Held.pending
    with _InterruptFlag(), interrupts.deferred():  # no stale Ctrl-C left for the next block
        pass


def test_a_second_ctrl_c_while_held_interrupts_at_once() -> None:
    """An import that hangs: the first Ctrl-C is held, the next one (past the same-keypress window) is not."""
    from harness import launch

    finished = False
    with _InterruptFlag() as flag, pytest.raises(KeyboardInterrupt), interrupts.deferred():
        _ctrl_c_now()
        flag._when -= launch.REPEAT_S  # as if the user pressed again after a while
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # stands for the hanging import
        finished = True
    assert not finished and not interrupts._Held.pending
