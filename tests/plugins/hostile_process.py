"""Backends that misbehave at the process level (tests/test_hostile_process.py): an op that calls sys.exit(0),
one that segfaults, one that hangs."""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from typing import Any, ClassVar

from harness.backends.torch_cpu import TorchCpu

# A slow start-up of an --isolate child (a vendor SDK initialising a device at import), longer than a short
# --case-timeout: the start-up must not count against the case's time. Only in the child: the parent's own
# loading of this file is not what is being tested.
if sys.argv[0].endswith("isolate.py"):
    time.sleep(float(os.environ.get("HOSTILE_IMPORT_SLEEP", "0")))


class Exiting(TorchCpu):
    """Its attention calls sys.exit(0), as a vendor library's error path sometimes does."""

    name: ClassVar[str] = "exiting"

    def attention(self, q: Any, k: Any, v: Any, **kw: Any) -> Any:
        sys.exit(0)


class Segfaulting(TorchCpu):
    """Its attention dies of a real SIGSEGV (a null read, as in a buggy extension)."""

    name: ClassVar[str] = "segfaulting"

    def attention(self, q: Any, k: Any, v: Any, **kw: Any) -> Any:
        faulthandler._sigsegv()


class Hanging(TorchCpu):
    """Its attention never returns."""

    name: ClassVar[str] = "hanging"

    def attention(self, q: Any, k: Any, v: Any, **kw: Any) -> Any:
        time.sleep(600)
