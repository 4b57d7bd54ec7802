"""`tunelab runs list | show`: read the MLflow tracking store back (a table, or one JSON object).

    tunelab runs list experiment.yaml            # the runs of that config's experiment
    tunelab runs list --uri sqlite:///runs/mlflow.db --stage train
    tunelab runs show 3f2a9c1e                   # a unique prefix of a run id is enough
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import JsonOption, emit, handle_errors

app = typer.Typer(help="Tracked runs in the MLflow store: list them, show one.", no_args_is_help=True)

ConfigArg = typer.Argument(None, help="Experiment config: read its store and experiment.", show_default=False)
UriOption = typer.Option(None, "--uri", help="MLflow tracking URI (default: the config's, else ./runs/mlflow.db).")
ExperimentOption = typer.Option(None, "--experiment", "-e", help="Experiment name (default: the config's; "
                                "with --uri or neither: all experiments).")

_STATUS_STYLE = {"FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}


def _when(iso: str | None) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S") if iso else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02.0f}s" if minutes else f"{secs:.1f}s")


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


@app.command("list")
@handle_errors
def list_cmd(
    config: Path | None = ConfigArg,
    uri: str | None = UriOption,
    experiment: str | None = ExperimentOption,
    stage: str | None = typer.Option(None, "--stage", help="Only runs of this stage (prepare, train, eval, ...)."),
    limit: int = typer.Option(50, "--limit", min=1, help="Newest runs to show."),
    as_json: bool = JsonOption,
) -> None:
    """Runs, newest first: id, stage, name, status, start, duration, key metrics."""
    from ..track.query import list_runs, resolve_store

    store, name = resolve_store(config, uri, experiment)
    result = list_runs(store, name, stage=stage, limit=limit)

    def render(console: Console) -> None:
        title = f"Runs in {', '.join(result['experiments']) or 'no experiment'}"
        table = Table(title=escape(title), caption=escape(result["uri"]))
        for col in ("id", "stage", "name", "status", "started", "duration", "key metrics"):
            table.add_column(col, no_wrap=col in ("id", "started"))
        for r in result["runs"]:
            metrics = "  ".join(f"{k}={_num(v)}" for k, v in r["key_metrics"].items())
            stage_text = ("└ " if r["parent"] else "") + (r["stage"] or "-")
            table.add_row(r["id"][:8], escape(stage_text), escape(r["name"] or "-"), _status(r["status"]),
                          _when(r["start_time"]), _duration(r["duration_s"]), escape(metrics))
        console.print(table)
        if not result["runs"]:
            console.print("[dim]no runs yet[/]")
        console.print(f"[dim]MLflow UI:[/] {escape(result['ui_command'])}", highlight=False, soft_wrap=True)

    emit(result, as_json, render)


def _render_show(r: dict[str, Any]):
    def render(console: Console) -> None:
        head = Table(title=f"Run {r['id']}", show_header=False)
        head.add_column("field", style="bold")
        head.add_column("value")
        rows = [("experiment", r["experiment"]), ("stage", r["stage"] or "-"), ("name", r["name"] or "-"),
                ("status", _status(r["status"])), ("started", _when(r["start_time"])),
                ("duration", _duration(r["duration_s"])), ("parent", r["parent"] or "-")]
        rows += [(f"uses {stage}", run_id) for stage, run_id in r["upstream"].items()]
        rows += [("child", f"{c['id']} {c['stage']} {c['status']}") for c in r["children"]]
        rows.append(("artifacts at", r["artifact_uri"]))
        for key, value in rows:
            head.add_row(escape(key), value if key == "status" else escape(str(value)))
        console.print(head)

        if r["metrics"]:
            mt = Table(title="Metrics (last value; step metrics: first -> last, min, max over the steps)")
            for col in ("metric", "last", "step", "points", "first", "min", "max"):
                mt.add_column(col, justify="left" if col == "metric" else "right")
            for key, m in r["metrics"].items():
                mt.add_row(escape(key), _num(m["last"]), str(m["step"]), str(m["points"]),
                           *(_num(m[k]) if k in m else "" for k in ("first", "min", "max")))
            console.print(mt)
        for title, data in (("Tags", r["tags"]), ("Params", r["params"])):
            if data:
                t = Table(title=title)
                t.add_column("key", style="bold")
                t.add_column("value", overflow="fold")
                for key, value in data.items():
                    t.add_row(escape(key), escape(value))
                console.print(t)
        if r["artifacts"]:
            at = Table(title="Artifacts")
            at.add_column("path")
            at.add_column("bytes", justify="right")
            for a in r["artifacts"]:
                at.add_row(escape(a["path"]), f"{a['size']:,}" if a["size"] is not None else "-")
            console.print(at)
        console.print(f"[dim]MLflow UI:[/] {escape(r['ui_command'])}", highlight=False, soft_wrap=True)

    return render


@app.command("show")
@handle_errors
def show_cmd(
    run_id: str = typer.Argument(..., help="Run id, or a unique prefix of one (as `runs list` shows)."),
    config: Path | None = ConfigArg,
    uri: str | None = UriOption,
    as_json: bool = JsonOption,
) -> None:
    """One run: params, tags, metrics (step metrics summarised), artifacts, lineage."""
    from ..track.query import resolve_store, show_run

    store, _ = resolve_store(config, uri, None)
    result = show_run(store, run_id)
    emit(result, as_json, _render_show(result))
