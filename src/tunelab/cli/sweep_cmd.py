"""`tunelab sweep CONFIG [section.key=value ...]`: a hyperparameter search over the config's `sweep:` section."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import JsonOption, emit, err_console, handle_errors


@handle_errors
def sweep(
    config_file: Path = typer.Argument(..., help="Experiment YAML file (its sweep: section; default space without)."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. sweep.objective.metric=val_loss."),
    trials: int = typer.Option(None, "--trials", min=1, help="Trials this process runs (default: sweep.trials)."),
    timeout: float = typer.Option(None, "--timeout", min=1, help="Start no trial after this many seconds."),
    storage: str = typer.Option(None, "--storage", help="Optuna storage: sqlite:///f.db, a database URL, or "
                                "journal:PATH (default: sqlite under the run directory)."),
    study: str = typer.Option(None, "--study", help="Study name (default: sweep.study, else the experiment name)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study (or join it from another process or "
                                "machine); created when missing."),
    as_json: bool = JsonOption,
) -> None:
    """Search training settings with Optuna's TPE: each trial trains in this process, is scored on a
    development split of the training data (never the evaluation set) and may be pruned early; writes the
    best config as YAML (`tunelab train` / `tunelab run` take it), a report with pictures, and MLflow runs."""
    from ..config import load_config
    from ..sweep import run

    config = load_config(config_file, overrides or [])

    def on_trial(row) -> None:
        value = f"{row['value']:.4g}" if row["value"] is not None else "-"
        where = f" at step {row['pruned_at_step']}" if row["state"] == "pruned" else ""
        err_console.print(f"[dim]trial {row['number']}: {row['state']}{where}, objective {value}, "
                          f"{row['params']}[/]", highlight=False, soft_wrap=True)

    result = run(config, trials=trials, timeout=timeout, storage=storage, study_name=study, resume=resume,
                 progress=not as_json, on_trial=None if as_json else on_trial)
    emit(result.to_dict(), as_json, lambda c: _render(c, result))


def _render(console, result) -> None:
    states = [t["state"] for t in result.trials]
    console.print(f"study [bold]{result.study_name}[/]: {len(states)} trials ({states.count('complete')} complete, "
                  f"{states.count('pruned')} pruned); this process ran {len(result.ran)}", highlight=False)
    if result.best_trial is None:
        console.print("no trial has completed yet", highlight=False)
    else:
        console.print(f"best: trial {result.best_trial}, {result.metric} = {result.best_value:.4g} "
                      f"({result.direction})", highlight=False)
        for key, value in result.best_params.items():
            console.print(f"  {key}: {value}", highlight=False)
        console.print(f"best config: {result.best_config_path}  (tunelab train / tunelab run take it)",
                      highlight=False, soft_wrap=True)
    for key, value in result.importances.items():
        console.print(f"  importance {key}: {value:.3f}", highlight=False)
    console.print(f"report: {result.report_path}", highlight=False, soft_wrap=True)
