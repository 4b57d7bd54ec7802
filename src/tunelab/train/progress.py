"""A live progress bar for training (rich, on stderr) fed by the loop's events.

The loop emits plain dict events (start, step, eval, checkpoint, end); this is one consumer, the CLI or a
notebook can pass its own callback instead of (or as well as) this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class RichProgress:
    """step n/N, loss, tokens/s, val loss and ETA, redrawn in place on stderr."""

    def __init__(self, description: str = "training") -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = None
        self._description = description

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "start":
            self._progress.start()
            self._task = self._progress.add_task(
                self._description, total=event["total_steps"], completed=event["step"], loss="-", val="-", tps="-"
            )
        elif self._task is None:
            return
        elif kind == "step":
            self._progress.update(
                self._task, completed=event["step"], loss=f"{event['loss']:.4f}", tps=f"{event['tokens_per_s']:,.0f}"
            )
        elif kind == "eval":
            self._progress.update(self._task, val=f"{event['val_loss']:.4f}")
        elif kind == "end":
            self.close()

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None


def fan_out(*callbacks: Callable[[Event], None] | None) -> Callable[[Event], None]:
    """One callback calling each given one in turn."""
    active = [c for c in callbacks if c is not None]

    def emit(event: Event) -> None:
        for callback in active:
            callback(event)

    return emit
