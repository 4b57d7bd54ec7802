"""Monitoring for the server: Prometheus metrics and a structured request log.

Metrics live in a CollectorRegistry of their own per app (not prometheus-client's global one), so two
servers in one process (tests, the load bench's two runs) never share or double-register counters:

- tunelab_requests_total{endpoint, model, status}: every API request by its HTTP status (499 when the
  client went away first, as nginx counts it); tunelab_request_errors_total{endpoint, model, status,
  type}: the ones that failed, by OpenAI error type;
- tunelab_request_latency_seconds{endpoint, model} and tunelab_time_to_first_token_seconds{endpoint, model}:
  histograms from the request's arrival (queueing included: that is what a client waits);
- tunelab_prompt_tokens_total / tunelab_generated_tokens_total{model}: counters; tokens/s is their rate
  (`rate(tunelab_generated_tokens_total[1m])`), which is how Prometheus means throughput to be read;
- tunelab_engine_<stat>: every number the engine's stats() gives at scrape time (at least queue_depth and
  batch_size), read when /metrics is scraped so they are never stale.

The `model` label only ever takes a served model's name: a request naming anything else counts as
"unknown" (and one naming none, such as a model listing, as "none"), so clients cannot grow the label set
(and the memory behind it) without bound.

The request log is one JSON object per line and per request (id, time, endpoint, model, status, token
counts, latency, time to first token, finish reason, error message), appended to a file. Prompts and
answers are not logged: they are the users' data. Each line passes tunelab.secrets' redactor.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..secrets import redact

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN_MODEL = "unknown"  # a request named a model this server does not serve
NO_MODEL = "none"  # a request that named none (model listing, feedback, a body that did not parse)
# Seconds: from a tiny model's few milliseconds to a long answer of a big one on CPU.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class _EngineStats:
    """A custom collector: the engine's stats() as gauges, read at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, float]]):
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for key, value in sorted(self.stats().items()):
            name = "tunelab_engine_" + "".join(c if c.isalnum() else "_" for c in key)
            yield GaugeMetricFamily(name, f"the serving engine's {key}", value=float(value))


class Monitor:
    """The metrics of one app and its request log."""

    def __init__(self, engine_stats: Callable[[], dict[str, float]], model_names: list[str],
                 log_path: Path | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = set(model_names)
        r = self.registry
        self.requests = Counter("tunelab_requests", "API requests by endpoint, model and HTTP status",
                                ["endpoint", "model", "status"], registry=r)
        self.errors = Counter("tunelab_request_errors", "failed API requests by endpoint, model, status and "
                              "error type", ["endpoint", "model", "status", "type"], registry=r)
        self.latency = Histogram("tunelab_request_latency_seconds", "seconds from arrival to the last byte",
                                 ["endpoint", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunelab_time_to_first_token_seconds", "seconds from arrival to the first token",
                              ["endpoint", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "prompt tokens of answered requests", ["model"],
                                     registry=r)
        self.generated = Counter("tunelab_generated_tokens", "tokens generated (rate() gives tokens/s)",
                                 ["model"], registry=r)
        r.register(_EngineStats(engine_stats))
        self.log = RequestLog(log_path) if log_path is not None else None

    def label(self, model: str | None) -> str:
        if model is None:
            return NO_MODEL
        return model if model in self.models else UNKNOWN_MODEL

    def record(self, *, endpoint: str, model: str | None, status: int, latency_s: float,
               request_id: str | None = None, prompt_tokens: int | None = None,
               completion_tokens: int | None = None, ttft_s: float | None = None,
               finish_reason: str | None = None, error_type: str | None = None,
               error: str | None = None) -> None:
        """Count one finished request and write its log line."""
        label = self.label(model)
        self.requests.labels(endpoint, label, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, label, str(status), error_type or "error").inc()
        if endpoint in ("chat.completions", "completions") and status < 400:
            self.latency.labels(endpoint, label).observe(latency_s)
            if ttft_s is not None:
                self.ttft.labels(endpoint, label).observe(ttft_s)
            self.prompt_tokens.labels(label).inc(prompt_tokens or 0)
            self.generated.labels(label).inc(completion_tokens or 0)
        if self.log is not None:
            self.log.write({
                "id": request_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "endpoint": endpoint,
                # the name as asked only if it is served: an unknown name may be anything a client sent
                "model": label, "status": status, "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens, "latency_s": round(latency_s, 4),
                "ttft_s": None if ttft_s is None else round(ttft_s, 4), "finish_reason": finish_reason,
                "error": error,
            })

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class RequestLog:
    """Appends one redacted JSON line per request; a line is written whole, under a lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # append, never truncate: the log of an earlier run of the server is the user's
        self._fh = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(redact(entry), ensure_ascii=False) + "\n"
        with self._lock:
            if not self._fh.closed:
                self._fh.write(line)
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
