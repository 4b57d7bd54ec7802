"""`tunelab ui` (the review web app over a workdir) and `tunelab review export` (its ratings as files).

    tunelab ui runs                                   # http://127.0.0.1:8765, ratings in runs/review.db
    tunelab ui runs --db postgresql://review@db/tunelab --port 9000
    tunelab review export runs --out prefs.jsonl --format preferences   # for `tunelab data prepare`

The app is tunelab.ui.create_app, the store and the exports tunelab.review; this module parses and prints.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import JsonOption, emit, err_console, handle_errors

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
RunsDirArg = typer.Argument(Path("runs"), help="The workdir your experiments write to (their `workdir`).")
DbOption = typer.Option(None, "--db", help="Ratings database URL (default: sqlite:///RUNS_DIR/review.db).")

review_app = typer.Typer(help="Human review ratings: export them.", no_args_is_help=True)


def _db_url(runs_dir: Path, db: str | None) -> str:
    from ..errors import TunelabError
    from ..review import default_db_url

    if not runs_dir.is_dir():
        raise TunelabError(f"{runs_dir}: not a directory (give the workdir your experiments write to)")
    return db or default_db_url(runs_dir)


def _run_server(app, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@handle_errors
def ui(
    runs_dir: Path = RunsDirArg,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535),
    db: str | None = DbOption,
) -> None:
    """Browse the workdir's comparisons, rate answers blind, and see how far the LLM judge agrees."""
    from ..ui import create_app
    from ..ui.app import allowed_hosts

    app = create_app(runs_dir, _db_url(runs_dir, db), hosts=allowed_hosts(host))
    if host not in _LOOPBACK:
        err_console.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach this address can read "
                          "the answers and add ratings")
    err_console.print(f"tunelab review on http://{host}:{port}  (ratings: {app.state.store.display_url}; Ctrl-C stops)",
                      highlight=False, markup=False)
    _run_server(app, host, port)


@review_app.command("export")
@handle_errors
def export(
    runs_dir: Path = RunsDirArg,
    out: Path = typer.Option(..., "--out", "-o", help="A new JSONL file to write."),
    fmt: str = typer.Option("ratings", "--format", "-f", help="ratings (every judgement) or preferences "
                            "(prompt/chosen/rejected rows for `tunelab data prepare` and DPO)."),
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Only this experiment's ratings."),
    reviewer: str | None = typer.Option(None, "--reviewer", help="Only this reviewer's ratings."),
    db: str | None = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """Write the ratings, or the preference records they make, to a JSONL file."""
    from ..review import RatingStore, write_export

    store = RatingStore(_db_url(runs_dir, db))
    try:
        ratings = store.ratings(experiment, reviewer)
        n = write_export(ratings, out, fmt)
    finally:
        store.close()
    result = {"out": str(out), "format": fmt, "rows": n, "ratings": len(ratings)}
    emit(result, as_json, lambda c: c.print(f"wrote {n} {fmt} row(s) from {len(ratings)} rating(s) to {out}",
                                            highlight=False, markup=False))
