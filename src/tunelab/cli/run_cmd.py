"""`tunelab run CONFIG` (the whole experiment) and `tunelab compare CONFIG` (the matrix with the weights
already trained). Both print the comparison table and the report path."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import JsonOption, emit, err_console, handle_errors, progress_reporter


def _execute(config_file: Path, overrides: list[str] | None, as_json: bool, train: bool) -> None:
    from .. import pipeline
    from ..config import load_config

    config = load_config(config_file, overrides or [])
    with progress_reporter() as on_progress:  # each variant's generation, on stderr
        if as_json:
            result = pipeline.run(config, progress=False, train=train, on_progress=on_progress)
        else:
            result = pipeline.run(config, on_stage=lambda s: err_console.print(f"[dim]> {s}[/]", highlight=False),
                                  train=train, on_progress=on_progress)
    emit(result.to_dict(), as_json, lambda c: render_result(c, result))


def render_result(console, result) -> None:
    from ..compare.table import render_terminal

    for step in result.steps:
        console.print(f"[dim]{step['step']}: {step['status']} ({step.get('seconds', 0)} s)[/]", highlight=False)
    if result.compare is not None:
        render_terminal(result.compare.comparison, console)
        console.print(f"report: {result.compare.files['report']}", highlight=False, soft_wrap=True)
        console.print(f"tables: {result.compare.files['markdown']}, {result.compare.files['csv']}", highlight=False,
                      soft_wrap=True)
    console.print(f"done in {result.seconds:.0f} s; outputs in {result.run_dir}", highlight=False, soft_wrap=True)


@handle_errors
def run(
    config_file: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. train.epochs=1 compare.rag=off."),
    as_json: bool = JsonOption,
) -> None:
    """Run the whole experiment: prepare, train each model, evaluate base/tuned x no-RAG/RAG, compare, report.
    Steps whose inputs have not changed are reused; an interrupted run resumes."""
    _execute(config_file, overrides, as_json, train=True)


@handle_errors
def compare(
    config_file: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides."),
    as_json: bool = JsonOption,
) -> None:
    """Evaluate the comparison matrix with the weights already trained (by `tunelab run` or compare.extra)
    and write the table and the HTML report; cached predictions are reused."""
    _execute(config_file, overrides, as_json, train=False)
