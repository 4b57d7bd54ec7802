"""Shared CLI plumbing: one way to print results (rich table or --json) and to turn errors into exits.

Every command that produces a result calls `emit`: with --json it prints exactly one JSON object on
stdout (and nothing else there), otherwise `render` draws it for a person. TunelabError becomes a red
message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from ..errors import TunelabError

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print one machine-readable JSON object on stdout.")


def emit(result: dict[str, Any], as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    if as_json:
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
