"""What every command shares: the stderr console, JSON output, progress bars, error handling."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from cellsynth_cli.errors import InputError

# progress and logs go to stderr so `--json` output on stdout stays machine-readable
console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


class CellsynthGroup(TyperGroup):
    """Turns bad input into one line on stderr and exit code 2, anything else into exit 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as exc:
            raise fail(str(exc)) from None
        except FileNotFoundError as exc:
            raise fail(f"no such file: {exc.filename or exc}") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise fail(f"no space left on device ({exc.filename or 'output'})") from None
            raise self._unexpected(exc) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence: one line, exit 1
            raise self._unexpected(exc) from None

    @staticmethod
    def _unexpected(exc: BaseException) -> typer.Exit:
        if os.environ.get("CELLSYNTH_DEBUG"):
            console.print_exception()
        name = type(exc).__name__
        return fail(
            f"unexpected {name}: {exc} (set CELLSYNTH_DEBUG=1 for the traceback)",
            EXIT_UNEXPECTED,
        )


def print_json(data: Any) -> None:
    """The command's result on stdout, nothing else there."""
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Progress]:
    """A rich progress bar on stderr (hidden with quiet / when stderr is not a terminal in CI)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    with progress:
        yield progress
