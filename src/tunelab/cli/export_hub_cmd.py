"""`tunelab export hub RUN_OR_DIR --repo ORG/NAME`: upload an adapter or a merged model with its model card
(tunelab.export.hub); `tunelab export card RUN`: print the run's model card (tunelab.export.card).

    tunelab export hub runs/exp/train/smollm2-135m-instruct --repo me/exp-lora --private
    tunelab export hub merged/ --run runs/exp/train/smollm2-135m-instruct --repo me/exp-merged
    tunelab export card runs/exp/train/smollm2-135m-instruct --merged

The token comes from HF_TOKEN or `hf auth login`, never from an option or a config file.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import JsonOption, emit, handle_errors


@handle_errors
def hub(
    run_or_dir: Path = typer.Argument(..., help="A training run directory, or a merged model directory."),
    repo: str = typer.Option(..., "--repo", help="The Hub repo to upload to: ORG/NAME (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    stage_dir: Path | None = typer.Option(None, "--stage-dir", help="Where to stage the files first (default: RUN/hub-staging, or DIR.hub-staging beside a model directory)."),
    run: Path | None = typer.Option(None, "--run", help="For a merged model directory: the training run it was merged from (for its card)."),
    as_json: bool = JsonOption,
) -> None:
    """Stage the adapter or model with a generated model card, then upload it to the Hub in one commit.

    The token comes from HF_TOKEN or `hf auth login`. Without one, or without network, nothing is sent;
    the staged files are kept and the error names the command that uploads them later."""
    from ..export.hub import push

    result = push(run_or_dir, repo, private=private, stage_dir=stage_dir, run=run)
    lines = [f"uploaded {result.kind} to {result.repo} in one commit: {result.url}",
             f"  files: {', '.join(result.files)}", f"  staged copy: {result.staged}"]
    emit(result.to_dict(), as_json, lambda c: c.print("\n".join(lines), markup=False, highlight=False))


@handle_errors
def card(
    run: Path = typer.Argument(..., help="A training run directory."),
    merged: bool = typer.Option(False, "--merged", help="The card of the model merged from the run's adapter."),
    repo: str | None = typer.Option(None, "--repo", help="The Hub repo id to show in the loading snippet."),
) -> None:
    """Print the run's model card (README.md text): base model, licence, training, evaluation, usage."""
    from ..export.card import build_card
    from .common import console

    text = build_card(run, kind="merged" if merged else "adapter", repo=repo)
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True, end="")
