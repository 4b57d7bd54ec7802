"""Shared CLI plumbing: one way to print results (rich table or --json) and to turn errors into exits.

Every command that produces a result calls `emit`: with --json it prints exactly one JSON object on
stdout (and nothing else there), otherwise `render` draws it for a person. While a --json command works,
anything else written to stdout goes to stderr instead (see `_stdout_to_stderr`). TunelabError becomes a
red message on stderr and a non-zero exit, never a traceback.


Nothing printed shows a secret (tunelab.secrets): the JSON result is masked, an unexpected error's
traceback is printed masked, and `main` (app.py) puts both standard streams behind MaskedStream, so
warnings, log lines and progress displays are masked as well.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import click
import typer
from rich.console import Console

from ..errors import TunelabError
from ..secrets import Redactor, redact_text

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print one machine-readable JSON object on stdout.")


class MaskedStream:
    """A text stream that masks secrets in everything written to it before passing it on."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)  # what the caller gave, as a stream's write reports

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, item: str) -> Any:  # flush, isatty, fileno, encoding ... of the real stream
        return getattr(self._stream, item)


# The real stdout of the --json command now running, as (stream, duplicate of its descriptor or None).
_real_stdout: list[tuple[TextIO, int | None]] = []


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever is written to stdout to stderr until the block ends, at both levels: sys.stdout
    (print, rich) and file descriptor 1 (C extensions, subprocesses). Libraries do write there: MLflow
    prints "View run ... at: URL" for every run it ends on a server store. `emit` still reaches the real
    stdout, so a --json command's stdout is its one JSON object."""
    real = sys.stdout
    real.flush()
    try:
        fd, err_fd = real.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = err_fd = None  # an in-memory stream (a test's runner): no descriptor to move
    saved = None
    if fd is not None and err_fd is not None:
        saved = os.dup(fd)
        os.dup2(err_fd, fd)
    _real_stdout.append((real, saved))
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = real
        _real_stdout.pop()
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)


def _write_stdout(text: str) -> None:
    if not _real_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    stream, fd = _real_stdout[-1]
    if fd is None:
        stream.write(text)
        stream.flush()
        return
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data):]


def emit(result: dict[str, Any], as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    if as_json:
        result = Redactor().value(result)
        _write_stdout(json.dumps(result, ensure_ascii=False, default=str) + "\n")
    elif render is not None:
        render(console)
    else:
        console.print_json(json.dumps(result, default=str))


def handle_errors(fn: Callable) -> Callable:
    """Decorator for commands: user errors print cleanly and exit non-zero; under --json (a parameter
    named as_json) stdout holds only what `emit` writes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _stdout_to_stderr() if kwargs.get("as_json") else contextlib.nullcontext():
                return fn(*args, **kwargs)
        except TunelabError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted; nothing partial was written[/]")
            raise typer.Exit(code=130) from None
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception:
            # a bug, not a user error: the traceback is worth showing, but its messages may quote a URL
            # with a password or a server's reply, so it is printed masked instead of by Python
            err_console.print(redact_text(traceback.format_exc()), markup=False, highlight=False,
                              soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper


def progress(transient: bool = True):
    """Progress of anything that takes more than a second, on stderr (stdout stays the result's): a rich
    bar on an interactive terminal, else plain timestamped lines at a steady pace (LineProgress)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not err_console.is_terminal:
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    )


@contextlib.contextmanager
def progress_reporter(transient: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """The `on_progress(task, done, total)` callback library stages take, drawn by `progress()`: one line
    of the display per task name. The display starts at the first report, so the steps before it (a
    training run's own bar) have the terminal to themselves."""
    with contextlib.ExitStack() as stack:
        display: Any = None
        tasks: dict[str, Any] = {}

        def report(task: str, done: int, total: int) -> None:
            nonlocal display
            if display is None:
                display = stack.enter_context(progress(transient))
            if task not in tasks:
                tasks[task] = display.add_task(task, total=total or None)
            display.update(tasks[task], completed=done, total=total or None)

        yield report


PROGRESS_EVERY_ENV = "TUNELAB_PROGRESS_EVERY"


class LineProgress:
    """Progress for a terminal that is not interactive (CI, a log file, `| tee`): one plain line on
    stderr per step when it starts and ends, and every `every_s` seconds in between (a heartbeat, even
    when nothing moved), each with a timestamp, done/total, the rate and the time left:

        2026-12-07 00:15:02 generating: 8/16 (50%), 0.41/s, about 20 s left, 19 s so far

    The same add_task/update calls as rich's Progress. `every_s` defaults to $TUNELAB_PROGRESS_EVERY or 10."""

    def __init__(self, every_s: float | None = None, clock: Callable[[], float] | None = None):
        import threading
        import time

        self.every_s = every_s if every_s is not None else float(os.environ.get(PROGRESS_EVERY_ENV) or 10)
        self._clock = clock or time.monotonic
        self._tasks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tunelab-progress", daemon=True)

    def __enter__(self) -> LineProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        with self._lock:
            self._tasks.append({"name": description, "total": total, "done": 0, "start": self._clock(),
                                "printed": None, "finished": False})
            task = len(self._tasks) - 1
            self._print(self._tasks[task])
        return task

    def update(self, task: int, completed: float | None = None, total: float | None = None, **_: Any) -> None:
        with self._lock:
            t = self._tasks[task]
            if total is not None:
                t["total"] = total
            if completed is not None:
                t["done"] = completed
            finished = bool(t["total"]) and t["done"] >= t["total"]
            if (finished and not t["finished"]) or self._clock() - t["printed"] >= self.every_s:
                t["finished"] = finished
                self._print(t)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s)):
            with self._lock:
                for t in self._tasks:
                    if not t["finished"] and self._clock() - t["printed"] >= self.every_s:
                        self._print(t)

    def _print(self, t: dict[str, Any]) -> None:
        import time

        now = self._clock()
        t["printed"] = now
        elapsed = now - t["start"]
        done, total = t["done"], t["total"]
        parts = [f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"]
        if done and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.2f}/s")
            if total and done < total:
                parts.append(f"about {_duration((total - done) / rate)} left")
        parts.append(f"{_duration(elapsed)} so far")
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {t['name']}: {', '.join(parts)}"
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def parse_pairs(values: list[str] | None, option: str, shape: str, example: str) -> dict[str, str]:
    """A repeatable KEY=VALUE option (`--field prompt=q --field completion=a`) as {key: value}; a value
    without "=" or a key given twice is an error naming the option."""
    pairs: dict[str, str] = {}
    for value in values or []:
        key, sep, item = (part.strip() for part in value.partition("="))
        if not sep or not key or not item:
            raise TunelabError(f"{option} '{value}': give {shape}, e.g. {option} {example}")
        if key in pairs:
            raise TunelabError(f"{option} '{value}': '{key}' is already given as '{pairs[key]}'")
        pairs[key] = item
    return pairs
