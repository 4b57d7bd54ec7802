"""Step metrics from the training loop, batched so that tracking does not slow training down.

    with tracker.run("train") as run:
        result = train.run(config, callback=step_callback(run))

The training loop (train/loop.py) emits event dicts: "step" (loss, lr, grad_norm, tokens, tokens_per_s,
epoch), "eval" (val_loss, val_ppl, val_loss/<task> for mixtures, ...), "eval_generate" (ROUGE-L of
answers generated during training), "checkpoint", "start", "end". Measured values are
buffered and written with one MLflow log_batch call every `every` events or `seconds` seconds, at the
"end" event, and when the run ends. A store that fails mid-training costs a warning and the buffered
points, never the training run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .tracker import NullRun, Run

log = logging.getLogger("tunelab.track")

# Bookkeeping in the loop's events that is not a measurement of the model.
_STEP_SKIP = frozenset({"event", "step", "total_steps", "eta_s", "elapsed_s"})
_EVAL_SKIP = frozenset({"event", "step", "epoch"})
_GENERATE_SKIP = frozenset({"event", "step", "n"})
_RENAME = {"loss": "train_loss"}  # next to val_loss in the MLflow UI


def _metric_name(kind: str, key: str) -> str:
    if kind == "step":
        return _RENAME.get(key, key)
    if kind == "eval_generate":
        return f"gen_{key}"  # gen_rougeL: generated answers, apart from the final evaluation's rougeL
    return key


class StepLogger:
    """A training-loop callback that turns events into MLflow step metrics."""

    def __init__(self, run: Run | NullRun, every: int = 100, seconds: float = 10.0):
        self.run = run
        self.every = max(1, every)
        self.seconds = seconds
        self.enabled = getattr(run, "enabled", False)
        self.logged = 0  # metric points written
        self.failures = 0  # batches the store refused
        self._rows: list[tuple[str, Any, int, int]] = []
        self._events = 0
        self._last_flush = time.monotonic()
        if self.enabled:
            run._step_loggers.append(self)  # the run flushes what is left when it ends

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event.get("event")
        skip = {"step": _STEP_SKIP, "eval": _EVAL_SKIP, "eval_generate": _GENERATE_SKIP}.get(kind)
        if skip is not None:
            now = int(time.time() * 1000)
            step = int(event.get("step") or 0)
            self._rows += [(_metric_name(kind, k), v, now, step) for k, v in event.items() if k not in skip]
            self._events += 1
        if kind == "end" or self._events >= self.every or time.monotonic() - self._last_flush >= self.seconds:
            self.flush()

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        self._events = 0
        self._last_flush = time.monotonic()
        if not rows or not self.enabled:
            return
        from ..errors import TunelabError

        try:
            self.logged += self.run._log_metric_rows(rows)
        except TunelabError as exc:
            self.failures += 1
            log.warning("step metrics not tracked (%d points dropped): %s", len(rows), exc)

    close = flush


def step_callback(run: Run | NullRun, every: int = 100, seconds: float = 10.0) -> StepLogger:
    """A callback for `train.run(config, callback=...)` logging step and eval metrics to `run`."""
    return StepLogger(run, every=every, seconds=seconds)
