"""Shared CLI plumbing: one way to print results (rich table or --json) and to turn errors into exits.

Every command that produces a result calls `emit`: with --json it prints exactly one JSON object on
stdout (and nothing else there), otherwise `render` draws it for a person. TunelabError becomes a red
message on stderr and a non-zero exit, never a traceback.

Nothing printed shows a secret (tunelab.secrets): the JSON result is masked, an unexpected error's
traceback is printed masked, and `main` (app.py) puts both standard streams behind MaskedStream, so
warnings, log lines and progress displays are masked as well.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

import click
import typer
from rich.console import Console

from ..errors import TunelabError
from ..secrets import Redactor, redact_text

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print one machine-readable JSON object on stdout.")


class MaskedStream:
    """A text stream that masks secrets in everything written to it before passing it on."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)  # what the caller gave, as a stream's write reports

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, item: str) -> Any:  # flush, isatty, fileno, encoding ... of the real stream
        return getattr(self._stream, item)


def emit(result: dict[str, Any], as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    if as_json:
        result = Redactor().value(result)
        sys.stdout.write(json.dumps(result, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()
    elif render is not None:
        render(console)
    else:
        console.print_json(json.dumps(result, default=str))


def handle_errors(fn: Callable) -> Callable:
    """Decorator for commands: user errors print cleanly and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunelabError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted; nothing partial was written[/]")
            raise typer.Exit(code=130) from None
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception:
            # a bug, not a user error: the traceback is worth showing, but its messages may quote a URL
            # with a password or a server's reply, so it is printed masked instead of by Python
            err_console.print(redact_text(traceback.format_exc()), markup=False, highlight=False,
                              soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper


def progress(transient: bool = True):
    """A rich progress bar for anything that takes more than a second (hidden under --json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    )
