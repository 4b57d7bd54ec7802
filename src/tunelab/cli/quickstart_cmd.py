"""`tunelab quickstart`: the main job on the bundled example (see tunelab.quickstart)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .common import JsonOption, emit, err_console, handle_errors, progress_reporter


@handle_errors
def quickstart(
    example: Path | None = typer.Option(None, "--example", help="Example directory (default: examples/handbook)."),
    overrides: list[str] = typer.Option(None, "--set", "-s", help="Dotted config override (repeatable)."),
    as_json: bool = JsonOption,
) -> None:
    """Run the whole experiment on the bundled example: LoRA-tune SmolLM2-135M on the handbook Q&A, then
    compare base, base + RAG, tuned and tuned + RAG on held-out questions; prints the table and the report."""
    from .. import quickstart as qs
    from .run_cmd import render_result

    start = time.perf_counter()
    config = qs.load(example, overrides or [])
    with progress_reporter() as on_progress:  # each variant's generation, on stderr
        if as_json:
            result = qs.run(config, progress=False, on_progress=on_progress)
        else:
            result = qs.run(config, on_stage=lambda s: err_console.print(f"[dim]> {s}[/]", highlight=False),
                            on_progress=on_progress)
    result.seconds = time.perf_counter() - start
    emit(result.to_dict(), as_json, lambda c: render_result(c, result))
