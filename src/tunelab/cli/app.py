"""Root typer app: each command group lives in its own module and is registered here."""

from __future__ import annotations

import os
import sys

import typer

from . import config_cmd, data_cmd, export_cmd, models_cmd, rag_cmd, runs_cmd
from .common import MaskedStream
from .eval_cmd import evaluate
from .quickstart_cmd import quickstart
from .run_cmd import compare, run
from .serve_cmd import chat, serve
from .sweep_cmd import sweep
from .train_cmd import train
from .ui_cmd import review_app, ui

app = typer.Typer(
    help="tunelab: fine-tune open LLMs, compare them against RAG, and serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(models_cmd.app, name="models")
app.add_typer(data_cmd.app, name="data")
app.add_typer(rag_cmd.app, name="rag")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(export_cmd.app, name="export")
app.add_typer(review_app, name="review")
app.command("train")(train)
app.command("eval")(evaluate)
app.command("quickstart")(quickstart)
app.command("run")(run)
app.command("compare")(compare)
app.command("sweep")(sweep)
app.command("serve")(serve)
app.command("chat")(chat)
app.command("ui")(ui)


def main() -> None:
    # Library progress bars (weight loading, hub downloads) would interleave with tunelab's own; our
    # commands show one progress display per step instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars libraries draw with plain tqdm (transformers' GGUF loader)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Everything this process prints (results, warnings, log lines, progress) passes the secret redactor.
    sys.stdout, sys.stderr = MaskedStream(sys.stdout), MaskedStream(sys.stderr)
    app()
