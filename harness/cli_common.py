"""What the `harness` commands share: option-list splitting, the exit-2 answer to bad input, consoles."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.names import BadInputError, split_values
from harness.ranks import rank_prefix, repeated_rank

if TYPE_CHECKING:
    from rich.console import Console

    from harness.backend import BackendRegistry

EXIT_USAGE = 2
EXIT_INTERNAL = 3  # an unexpected error: a case could not run, or the harness failed
EXIT_INTERRUPTED = 130
DEBUG_KEY = "harness.debug"  # in the click context's meta: --debug was given


def debugging() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(DEBUG_KEY))


def answer_unexpected(exc: BaseException) -> int:
    """An exception that escaped a command, answered with one line (the traceback only with --debug); the exit
    code: 2 for bad input, 130 for Ctrl-C, 3 for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    if debugging():
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    message = " ".join(str(exc).split()) or "(no message)"
    hint = "" if debugging() else " (rerun with --debug for the traceback)"
    click.echo(f"error: {type(exc).__name__}: {message}{hint}", err=True)
    return EXIT_USAGE if isinstance(exc, BadInputError) else EXIT_INTERNAL


class HarnessGroup(click.Group):
    """The command group whose commands never end in a traceback (unless --debug): see answer_unexpected."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's usage errors (an unknown option, a bad choice) once per node under torchrun: repeated_rank."""
        if not repeated_rank() or kwargs.get("standalone_mode") is False:
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.ClickException as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except BaseException as exc:  # KeyboardInterrupt included: 130, not click's "Aborted!" and 1
            ctx.exit(answer_unexpected(exc))


@contextmanager
def bad_input_exits() -> Iterator[None]:
    try:
        yield
    except BadInputError as exc:
        if not repeated_rank():
            click.echo(f"{rank_prefix()}error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


@contextmanager
def writing(flag: str, path: Path) -> Iterator[None]:
    """An OS error writing an output the user named (`--plots DIR`, `--output FILE`: a read-only or full file
    system, a path under a file) is exit 2 with one line naming the option and the path, not an unexpected error."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        click.echo(f"error: {flag} {path}: cannot write there: {exc.strerror or exc}{where}", err=True)
        sys.exit(EXIT_USAGE)


PIPED_WIDTH = 200  # stdout piped or captured and no COLUMNS: wide enough for whole tables


def stdout_console() -> Console:
    """The terminal's width on a terminal, COLUMNS when set (piped too: the user asked for that width), else wide
    enough for whole tables when piped or captured."""
    from rich.console import Console

    console = Console()  # rich takes COLUMNS when it is a positive number, else the terminal's width
    columns = os.environ.get("COLUMNS", "")
    if console.is_terminal or (columns.isdigit() and int(columns) > 0):
        return console
    return Console(width=PIPED_WIDTH)


def load_registry(plugins: tuple[str, ...]) -> BackendRegistry:
    from harness.backend import default_registry

    return default_registry(split_values(plugins))


plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE_OR_FILE.py", help="Load extra backends from a module or file."
)
