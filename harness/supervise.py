"""`harness run` without --isolate, watched from outside its process: after a segfault in a backend no Python
code runs in the process that ran the case, so the command forks before anything heavy is imported. The child
runs the sweep with faulthandler on (the Python stack of a crash goes to stderr); the parent only waits. If the
child dies of a signal, the parent prints one line naming the case in flight, where the records so far are, and
how to finish the run (`--isolate` survives crashes, `--resume FILE` runs the rest), and exits 3.

The child tells the parent what it is doing through a page of shared memory (no system call per case). Signals:
Ctrl-C at a terminal reaches both processes (they share the process group): the child stops after the case in
flight and exits 130, which the parent passes on; a signal sent to the parent alone (kill, a CI runner,
`timeout`) is forwarded to the child; a parent killed outright takes the child with it (PR_SET_PDEATHSIG).
Linux only (sigwaitinfo, prctl); elsewhere, and where stdout or stderr is not a real file (a test runner that
captures output in memory), the command runs unsupervised in its own process.
"""

from __future__ import annotations

import faulthandler
import json
import mmap
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from harness.ranks import rank_prefix, repeated_rank

EXIT_CRASHED = 3
PAGE = 16384  # the shared state: JSON, NUL-terminated
SI_KERNEL = 0x80  # siginfo si_code of a signal the kernel generated (a terminal's Ctrl-C), not sent by a process
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


class _Shared:
    """What a supervised child has told its parent so far; `page` is None outside a supervised child."""

    page: mmap.mmap | None = None
    facts: ClassVar[dict[str, Any]] = {}


def _publish(**facts: Any) -> None:
    page = _Shared.page
    if page is None:
        return
    _Shared.facts.update(facts)
    data = json.dumps(_Shared.facts).encode()[: PAGE - 1] + b"\0"
    page[: len(data)] = data


def note_output(path: Path) -> None:
    """The results file of the run (for the parent's crash line)."""
    _publish(out=str(path))


def note_case(key: str | None, kept: int) -> None:
    """The case about to run (None: the sweep is over) and the records written so far."""
    _publish(case=key, kept=kept)


def _read(state: mmap.mmap) -> dict[str, Any]:
    raw = bytes(state[:PAGE]).split(b"\0", 1)[0]
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _real_file(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    return True


def supported() -> bool:
    """Can (and should) this process supervise its run? See the module docstring."""
    return (
        sys.platform == "linux"
        and hasattr(signal, "sigwaitinfo")
        and os.environ.get("HARNESS_SUPERVISE", "1") != "0"
        and _real_file(sys.stdout)
        and _real_file(sys.stderr)
    )


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_supervised(body: Callable[[], None], on_error: Callable[[BaseException], int]) -> None:
    """Run `body` (the command) in a watched child; ends the process with the child's exit code (3 if the child
    died of a signal). `on_error` answers an exception that escaped `body` and returns its exit code. Runs
    `body` in this process, unwatched, where supervision is not supported."""
    if not supported():
        body()
        return
    state = mmap.mmap(-1, PAGE)  # anonymous and shared: the child's writes are seen here
    watched = {*FORWARDED, signal.SIGCHLD}
    sys.stdout.flush()
    sys.stderr.flush()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    pid = os.fork()
    if pid == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _Shared.page = state
        os._exit(_child(body, on_error))
    sys.exit(_wait(pid, state, watched))


def _child(body: Callable[[], None], on_error: Callable[[BaseException], int]) -> int:
    """The child's whole life: the command, then its exit code (never returns into the caller's stack)."""
    import click

    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        return EXIT_CRASHED
    faulthandler.enable()  # the Python stack of a segfault or abort, on stderr
    code = 0
    try:
        body()
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except BaseException as exc:
        code = on_error(exc)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    return code


def _wait(pid: int, state: mmap.mmap, watched: set[signal.Signals]) -> int:
    """Wait for the child, forwarding the signals sent to this process alone; its exit code."""
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo != signal.SIGCHLD:
            if info.si_code != SI_KERNEL:  # a terminal's Ctrl-C reached the child too; kill(2) did not
                os.kill(pid, info.si_signo)
            continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            break
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    signum = os.WTERMSIG(status)
    if signum == signal.SIGINT:
        return 130
    facts = _read(state)
    if signum == signal.SIGTERM and facts.get("out") is None and repeated_rank():
        return EXIT_CRASHED  # torchrun stopping a rank that had run nothing after another failed: that one says why
    print(f"{rank_prefix()}error: {crash_line(signum, facts)}", file=sys.stderr, flush=True)
    return EXIT_CRASHED


def crash_line(signum: int, facts: dict[str, Any]) -> str:
    """One line: what killed the run, the case in flight, where the records are, how to finish the run."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if name == "SIGKILL":
        name += " (out of memory? the kernel's OOM killer sends SIGKILL)"
    out = facts.get("out")
    if out is None:
        return f"harness run was killed by {name} before its first case (loading plugins or planning)"
    case = facts.get("case", "")
    where = f"while running {case}" if case else "before its first case" if case == "" else "after its last case"
    kept = int(facts.get("kept", 0))
    return (
        f"harness run was killed by {name} {where}; {kept} record{'' if kept == 1 else 's'} of this run "
        f"{'is' if kept == 1 else 'are'} in {out}; "
        f"rerun with --isolate (a crash then costs one record) and --resume {out} to run the rest"
    )
