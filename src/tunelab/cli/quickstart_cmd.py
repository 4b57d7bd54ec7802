"""`tunelab quickstart`: the main job on the bundled example (see tunelab.quickstart)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from .common import JsonOption, emit, err_console, handle_errors


@handle_errors
def quickstart(
    example: Path | None = typer.Option(None, "--example", help="Example directory (default: examples/handbook)."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="Dotted config override (repeatable)."),
    samples: int = typer.Option(3, "--samples", help="Held-out questions the base model answers."),
    as_json: bool = JsonOption,
) -> None:
    """Run the main job on the bundled example: pull the model, prepare the data, answer with the base model."""
    from .. import quickstart as qs

    start = time.perf_counter()
    config = qs.load(example, overrides or [])
    if as_json:
        result = qs.run(config, n_samples=samples)
    else:
        with err_console.status("quickstart") as status:
            result = qs.run(config, n_samples=samples, on_stage=lambda s: status.update(f"[bold]{s}"))
    data = result.to_dict() | {"seconds": round(time.perf_counter() - start, 1)}
    emit(data, as_json, lambda c: _render(c, result, data["seconds"]))


def _render(console, result, seconds: float) -> None:
    table = Table(title="quickstart: stages run")
    table.add_column("step")
    table.add_column("result")
    table.add_column("s", justify="right")
    for step in result.steps:
        detail = {k: v for k, v in step.items() if k in ("path", "splits", "removed", "pii", "n")}
        table.add_row(step["step"], str(detail), str(step["seconds"]))
    console.print(table)
    for s in result.samples:
        console.print(f"[bold]Q:[/] {s['question']}\n  [green]reference:[/] {s['reference']}\n  [cyan]base model:[/] {s['base_model']}")
    console.print(f"outputs in {result.run_dir} ({seconds:.0f} s)")
    console.print("[dim]Training, evaluation and the base-vs-tuned-vs-RAG comparison are added to this job as they land.[/]")
