"""`tunelab config validate|show`: check an experiment file and print it resolved."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.syntax import Syntax

from ..config import load_config
from ..secrets import redact_text
from .common import JsonOption, emit, handle_errors

app = typer.Typer(help="Validate and show experiment config files.", no_args_is_help=True)

OverrideOption = typer.Option(None, "--set", "-s", help="Dotted override, e.g. train.lr=1e-4 (repeatable).")


@app.command("validate")
@handle_errors
def validate(
    file: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] = OverrideOption,
    as_json: bool = JsonOption,
) -> None:
    """Validate FILE; every error is reported with its dotted path and line."""
    config = load_config(file, overrides or [])
    emit(
        {"valid": True, "file": str(file), "name": config.name, "fingerprint": config.fingerprint()},
        as_json,
        lambda c: c.print(f"[green]ok[/] {file}: experiment '{config.name}' is valid"),
    )


@app.command("show")
@handle_errors
def show(
    file: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] = OverrideOption,
    as_json: bool = JsonOption,
) -> None:
    """Print the resolved config: defaults filled in, paths made absolute, secrets masked."""
    config = load_config(file, overrides or [])
    text = redact_text(config.to_yaml())
    emit(config.resolved(), as_json, lambda c: c.print(Syntax(text, "yaml", theme="ansi_dark")))
