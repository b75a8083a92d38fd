"""What the `harness` commands share: option-list splitting, the exit-2 answer to bad input, consoles."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from harness.names import BadInputError, split_values

if TYPE_CHECKING:
    from rich.console import Console

    from harness.backend import BackendRegistry

EXIT_USAGE = 2


@contextmanager
def bad_input_exits() -> Iterator[None]:
    try:
        yield
    except BadInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def stdout_console() -> Console:
    """The terminal's width on a terminal; wide enough for whole tables when piped or captured."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def load_registry(plugins: tuple[str, ...]) -> BackendRegistry:
    from harness.backend import default_registry

    return default_registry(split_values(plugins))


plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE_OR_FILE.py", help="Load extra backends from a module or file."
)
