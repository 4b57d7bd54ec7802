"""`tunelab train CONFIG [section.key=value ...]`: one training run from an experiment file."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .common import JsonOption, emit, handle_errors


@handle_errors
def train(
    config_file: Path = typer.Argument(..., help="Experiment YAML file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-4 method.r=8."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint of this run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (params, tokens, steps, memory, time, suggestions)."),
    as_json: bool = JsonOption,
) -> None:
    """Fine-tune the config's model with its method and objective; writes the run directory.

    Several processes: `accelerate launch --config_file configs/accelerate/ddp.yaml $(which tunelab) train
    CONFIG` (or torchrun); see configs/accelerate/README.md."""
    from ..config import load_config
    from ..train import run

    config = load_config(config_file, overrides or [])
    from ..compare.ragaware import standalone

    prepared = standalone(config)  # data.rag_context: examples with retrieved passages
    data = None
    if prepared is not None:
        config, data = prepared.config, prepared.data
    if dry_run or os.environ.get("RANK", "0") != "0":
        result = run(config, resume=resume, dry_run=dry_run, progress=not as_json, data=data)
    else:  # rank 0 (or the only process) records the run in MLflow (tracking.enabled: false turns it off)
        from ..pipeline import Interrupted, tracked_train
        from ..track import Tracker

        try:
            result = tracked_train(Tracker.from_config(config), config, resume=resume, progress=not as_json,
                                   data=data)
        except Interrupted as exc:
            message = str(exc)
            emit({"run_dir": str(config.run_dir), "status": "interrupted", "message": message}, as_json,
                 lambda c: c.print(f"[yellow]interrupted[/]: {message}", highlight=False))
            raise typer.Exit(code=130) from None
    if os.environ.get("RANK", "0") != "0":
        # one of several processes (accelerate launch / torchrun): rank 0 reports for all of them
        if result.status == "interrupted":
            raise typer.Exit(code=130)
        return
    if dry_run:
        emit({"run_dir": str(result.run_dir), "status": result.status, "plan": result.plan}, as_json,
             lambda c: _render_plan(c, result.plan))
        return
    out = {"run_dir": str(result.run_dir), "status": result.status, **result.summary}
    emit(out, as_json, lambda c: _render(c, result))
    if result.status == "interrupted":
        # a checkpoint was saved; `--resume` continues it, but the run itself did not finish
        raise typer.Exit(code=130)


def _render_plan(console, plan) -> None:
    from ..train.plan import format_plan

    if "stages" in plan:  # sequential stages: one plan each
        for stage in plan["stages"]:
            console.print(f"[bold]stage {stage['stage']}[/]")
            console.print(format_plan(stage), highlight=False)
        return
    console.print(format_plan(plan), highlight=False)


def _render(console, result) -> None:
    s = result.summary
    console.print(f"[bold]{result.status}[/]: {result.run_dir}")
    for key in ("method", "objective", "steps", "tokens_trained", "final_train_loss", "final_val_loss",
                "final_val_perplexity", "tokens_per_s", "wall_s", "peak_rss_mb", "trainable_params"):
        if key in s:
            value = s[key]
            console.print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    for task, loss in (s.get("final_val_loss_per_task") or {}).items():
        console.print(f"  val_loss/{task}: {loss:.4g}")
    for stage in s.get("stages") or []:
        loss = stage.get("final_train_loss")
        console.print(f"  stage {stage['index']} {stage['name']} ({stage['objective']}, {stage['method']}): "
                      f"{stage['status']}{' (reused)' if stage['skipped_on_resume'] else ''}, {stage['steps']} steps"
                      + (f", train loss {loss:.4g}" if isinstance(loss, float) else ""))
    if (s.get("artifact") or {}).get("kind"):
        console.print(f"  artifact: {s['artifact']['kind']} in {result.run_dir}")
