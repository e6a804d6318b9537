"""What every command shares: the stderr console, JSON output, progress bars, error handling."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

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
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from cellsynth_cli.errors import InputError
from cellsynth_cli.runtime.cluster import CLUSTER_HELP, parse_cluster

# progress and logs go to stderr so `--json` output on stdout stays machine-readable;
# no markup is read from printed strings: they hold paths and names ("run[1]", "[/]")
console = Console(stderr=True, markup=False)

EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    console.print(
        Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True
    )
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
        except BrokenPipeError:
            raise  # the reader of stdout went away (`| head`): Click ends quietly
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise fail(f"no space left on device ({exc.filename or 'output'})") from None
            raise self._unexpected(exc) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if _is_usage_error(exc):
                raise  # Click prints the usage line, the error and "Try --help"; exit 2
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


# ---------------------------------------------------------------------------------------------
# options every command spells the same way

JsonOut = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as JSON on stdout (progress and logs go to stderr)."
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue where an earlier run stopped: keep what it finished and do the rest "
        "(it must have used the same inputs and settings).",
    ),
]
Device = Annotated[
    str, typer.Option("--device", help="auto (CUDA when available, else CPU) | cpu | cuda.")
]


def _check_cluster(value: str | None) -> str | None:
    """A bad --cluster is one line before any work (or progress bar) starts."""
    parse_cluster(value)
    return value


Cluster = Annotated[
    str | None,
    typer.Option("--cluster", help=CLUSTER_HELP, show_default=False, callback=_check_cluster),
]
Seed = Annotated[
    int,
    typer.Option("--seed", help="Random seed: the same seed gives the same output (per device)."),
]


def path_option(flags: tuple[str, ...], what: str, default: str | None = None) -> Any:
    """A path option whose default is a folder of the project directory (docs/method.md)."""
    note = f" Default: {default}/ in the working directory." if default else ""
    return Annotated[Path | None, typer.Option(*flags, help=f"{what}{note}", show_default=False)]


def default_path(value: Path | None, default: str | Path, option: str, must_exist: bool) -> Path:
    """VALUE, or the conventional DEFAULT (printed on stderr, so a user sees what was used)."""
    if value is not None:
        return value
    path = Path(default)
    if must_exist and not (path.exists() or path.is_symlink()):
        raise InputError(
            f"{option} not given and the default {path}/ does not exist in {Path.cwd()}; "
            f"pass {option} PATH"
        )
    shown = f"{path}/" if not path.suffix else str(path)  # directories end in /
    console.print(f"{option} {shown} (default)", style="dim", highlight=False)
    return path


class CellsynthCommand(TyperCommand):
    """Every usage error of a command shows its usage line and "Try ... --help": Click leaves
    them out for some parse errors (an option given without its value)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            if _is_usage_error(exc) and getattr(exc, "ctx", False) is None:
                exc.ctx = ctx
            raise


def _is_usage_error(exc: BaseException) -> bool:
    """Click's own errors (usage, bad parameter values); newer Typers vendor Click, so match by
    class name rather than importing one particular Click."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


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
def progress_bar(
    quiet: bool = False, *, count: bool = True, status: bool = True, remaining: bool = True
) -> Iterator[Progress]:
    """A rich progress bar on stderr (hidden with quiet / when stderr is not a terminal in CI):
    description, bar, done/total (COUNT), the task's status field (STATUS), elapsed time and,
    with REMAINING, the time left. A failed command erases it (erase_on_error)."""
    columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn()]
    if count:
        columns.append(MofNCompleteColumn())
    if status:
        columns.append(TextColumn("{task.fields[status]}", markup=False))
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    progress = Progress(*columns, console=console, disable=quiet, transient=False)
    with progress, erase_on_error(progress):
        yield progress


@contextmanager
def erase_on_error(progress: Progress) -> Iterator[None]:
    """A failed command leaves its one error line, not a half-filled bar above it."""
    try:
        yield
    except BaseException:
        progress.live.transient = True
        raise


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report an interrupted command


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch scheduler's stop, `kill`) checkpoints like Ctrl-C before exiting."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_sizes(text: str | None, option: str, minimum: int = 1) -> tuple[int, ...] | None:
    """'256,256' -> (256, 256); every value >= minimum."""
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{option} expects integers like 256,256, got {text!r}") from None
    if not sizes or min(sizes) < minimum:
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise InputError(f"{option} expects {kind}, got {text!r}")
    return sizes
