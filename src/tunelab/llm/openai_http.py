"""Chat completions against any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, LM Studio).

    backend = OpenAIBackend("llama3.1", "http://localhost:11434/v1", concurrency=4)
    answers = backend.complete([[{"role": "user", "content": "Hi"}]], max_tokens=32)

Behaviour, and why:
- Requests run concurrently on a thread pool of `concurrency` workers over one httpx.Client (its
  connection pool is thread-safe), so a slow local server is kept busy without flooding it.
- Timeouts, connection errors, 429 and 5xx are retried with exponential backoff and full jitter
  (a Retry-After header is honoured, capped); other 4xx are the caller's mistake and are not
  retried. After the last attempt the item becomes a failed Completion whose message names the URL,
  the HTTP status and the start of the server's reply.
- `json_schema` sends `response_format={"type": "json_schema", "json_schema": {"name": "reply",
  "schema": ...}}`, which vLLM, llama.cpp's server, LM Studio, OpenAI and Ollama (0.5 and later, whose
  /v1 endpoint maps it onto its native `format`) decode under; so no server needs detecting. A
  server that rejects it with a 400 (or 422) naming response_format or json_schema is asked again in
  JSON mode (`{"type": "json_object"}`, also what `json_mode` alone sends), and one that rejects that
  too is asked with the prompt alone; each step is taken once per backend, not per request, and
  `structured_output` says where it ended ("json_schema", "json_object" or "prompt"; the structured
  layer validates and re-asks in every case). Likewise a 400 asking for `max_completion_tokens`
  (newer OpenAI models) switches the length parameter to that name.
- Ctrl-C: requests not yet sent are dropped and requests waiting to retry give up, so the call
  returns at once and the cache keeps exactly the answers that arrived.
- A circuit breaker: after `breaker` requests in a row could not connect at all, the rest fail at
  once instead of each waiting through its retries against a server that is down.
- The API key is read from an environment variable (default OPENAI_API_KEY) and sent only as the
  Authorization header; it is never part of `name`, `identity()`, an error message or a log line.
  A password in the base URL (http://user:PASSWORD@host/v1) is sent as Basic auth and likewise shown
  as "***" in `name`, `identity()` and every message. Both are registered with tunelab.secrets, so
  they are masked wherever they turn up, even in a server's reply quoted in an error.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import httpx

from ..errors import TunelabError
from ..secrets import redact_text, register_secret, register_url_secrets
from .spec import (
    CONNECTION_ERROR,
    HTTP_ERROR,
    INVALID_RESPONSE,
    TIMEOUT,
    BackendSpec,
    Completion,
    Conversation,
    JsonSchemas,
    OnResult,
    schema_per_conversation,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
OPTIONS = ("api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s", "backoff_max_s", "breaker")


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based): full jitter over base * 2**(attempt-1),
    capped; a server's Retry-After (seconds) is a floor, also capped."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class _Final(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint; see the module docstring."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str = DEFAULT_KEY_ENV,
        concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        breaker: int = 8,
        transport: httpx.BaseTransport | None = None,
    ):
        problems = []
        if concurrency < 1:
            problems.append(f"concurrency must be at least 1 (got {concurrency})")
        if timeout_s <= 0:
            problems.append(f"timeout_s must be positive (got {timeout_s})")
        if max_retries < 0:
            problems.append(f"max_retries must be 0 or more (got {max_retries})")
        if backoff_s < 0 or backoff_max_s < 0:
            problems.append("backoff times must not be negative")
        if breaker < 1:
            problems.append(f"breaker must be at least 1 (got {breaker})")
        if problems:
            raise TunelabError("invalid OpenAI backend settings: " + "; ".join(problems))
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        register_url_secrets(self.base_url)
        # what names, keys and messages show: the URL with its password masked, host and user kept
        self.shown_base_url = redact_text(self.base_url)
        if not self.base_url.startswith(("http://", "https://")):
            raise TunelabError(f"base URL '{self.shown_base_url}' must start with http:// or https://")
        self.url = f"{self.base_url}/chat/completions"
        self.shown_url = f"{self.shown_base_url}/chat/completions"
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.breaker = breaker
        self.name = f"openai:{model}@{self.shown_base_url}"
        self.json_schema_supported = True
        self.json_mode_supported = True
        self.token_limit_param = "max_tokens"
        key = os.environ.get(api_key_env) if api_key_env else None
        register_secret(key)  # whatever the variable's name, its value is masked wherever it turns up
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._has_key = bool(key)
        self._client = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)
        self._lock = threading.Lock()
        self._connect_failures = 0  # consecutive requests that never reached the server
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.name!r}, key from ${self.api_key_env}: {'set' if self._has_key else 'unset'})"

    @property
    def structured_output(self) -> str:
        """How this server is asked for structured replies now: json_schema, json_object or prompt."""
        if self.json_schema_supported:
            return "json_schema"
        return "json_object" if self.json_mode_supported else "prompt"

    def identity(self) -> dict[str, Any]:
        # The password is masked here, so call-cache keys do not depend on it: the same model on the same
        # host (and user) answers the same whatever the credential, a rotated password keeps the cache,
        # and no hash of a password is stored. The API key was never part of the identity, for the same
        # reasons.
        return {"kind": self.kind, "model": self.model, "base_url": self.shown_base_url}

    def close(self) -> None:
        self._client.close()

    # -- the batch ------------------------------------------------------------------------------
    def complete(
        self,
        conversations: Sequence[Conversation],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int | None = None,
        json_mode: bool = False,
        on_result: OnResult | None = None,
        json_schema: JsonSchemas = None,
    ) -> list[Completion]:
        schemas = schema_per_conversation(json_schema, len(conversations))
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if stop:
            params["stop"] = list(stop)
        if seed is not None:
            params["seed"] = seed
        results: list[Completion | None] = [None] * len(conversations)
        if not conversations:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations)),
                                  thread_name_prefix="tunelab-openai")
        stop_event = threading.Event()  # set on Ctrl-C: requests still retrying give up at once
        try:
            futures = {pool.submit(self._one, list(c), params, json_mode, schemas[i], stop_event): i
                       for i, c in enumerate(conversations)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures[fut]
                    results[i] = fut.result()
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:
            # Ctrl-C or a failing callback: requests not yet sent are dropped, so the caller's
            # cache holds exactly the answers that came back.
            stop_event.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results  # type: ignore[return-value]

    # -- one request with retries ---------------------------------------------------------------
    def _one(self, messages: Conversation, params: dict[str, Any], json_mode: bool,
             schema: dict[str, Any] | None, stop_event: threading.Event) -> Completion:
        start = time.perf_counter()
        attempt = 0
        last: _Retryable | None = None
        while True:
            if stop_event.is_set():
                return Completion.failure(CONNECTION_ERROR, "not sent: the run was interrupted",
                                          time.perf_counter() - start, attempt)
            if self._connect_failures >= self.breaker:
                return Completion.failure(
                    CONNECTION_ERROR,
                    f"not sent: {self._connect_failures} requests in a row could not connect to {self.shown_url}"
                    + (f" (last: {redact_text(str(last))})" if last else ""),
                    time.perf_counter() - start, attempt,
                )
            attempt += 1
            try:
                out = self._post(messages, params, json_mode, schema)
            except _Retryable as exc:
                last = exc
                if attempt > self.max_retries:
                    break
                stop_event.wait(backoff_delay(attempt, self.backoff_s, self.backoff_max_s, self._rng, exc.retry_after))
                continue
            except _Final as exc:
                self._reached_server()
                return Completion.failure(exc.kind, str(exc), time.perf_counter() - start, attempt)
            self._reached_server()
            out.latency_s = time.perf_counter() - start
            out.attempts = attempt
            return out
        assert last is not None
        if last.kind == CONNECTION_ERROR:
            with self._lock:
                self._connect_failures += 1
        else:
            self._reached_server()
        return Completion.failure(
            last.kind, f"POST {self.shown_url} failed after {attempt} attempt(s): {redact_text(str(last))}",
            time.perf_counter() - start, attempt
        )

    def _reached_server(self) -> None:
        with self._lock:
            self._connect_failures = 0

    def _post(self, messages: Conversation, params: dict[str, Any], json_mode: bool,
              schema: dict[str, Any] | None = None) -> Completion:
        body: dict[str, Any] = {"model": self.model, "messages": messages, **params}
        if self.token_limit_param != "max_tokens" and "max_tokens" in body:
            body[self.token_limit_param] = body.pop("max_tokens")
        with_format = None
        if schema is not None and self.json_schema_supported:
            with_format = "json_schema"
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
        elif (json_mode or schema is not None) and self.json_mode_supported:
            with_format = "json_object"
            body["response_format"] = {"type": "json_object"}
        try:
            resp = self._client.post(self.url, json=body, timeout=self.timeout_s)
        except httpx.TimeoutException as exc:
            raise _Retryable(TIMEOUT, f"no answer within {self.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(CONNECTION_ERROR, f"cannot reach the server ({type(exc).__name__}: {exc})") from None
        status = resp.status_code
        if status == 200:
            return _parse(resp, self.shown_url)
        excerpt = resp.text[:300].replace("\n", " ")
        if status in (400, 422) and with_format and any(w in resp.text for w in ("response_format", with_format)):
            # The server does not take this format; ask again with the next one down (not a retry).
            if with_format == "json_schema":
                self.json_schema_supported = False
            else:
                self.json_mode_supported = False
            return self._post(messages, params, json_mode, schema)
        if status == 400 and self.token_limit_param == "max_tokens" and "max_completion_tokens" in resp.text:
            # Newer OpenAI models take the answer length as max_completion_tokens only.
            self.token_limit_param = "max_completion_tokens"
            return self._post(messages, params, json_mode, schema)
        if status == 429 or status >= 500:
            raise _Retryable(HTTP_ERROR, f"HTTP {status}: {excerpt}", _retry_after(resp))
        hint = ""
        if status in (401, 403):
            hint = f" (the API key comes from ${self.api_key_env}: {'set' if self._has_key else 'not set'})"
        elif status == 404:
            hint = (f" (is {self.shown_base_url} the API base, usually ending in /v1, and is model "
                    f"'{self.model}' served there?)")
        raise _Final(HTTP_ERROR, redact_text(f"POST {self.shown_url}: HTTP {status}{hint}: {excerpt}"))


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the jittered backoff applies


def _parse(resp: httpx.Response, url: str) -> Completion:
    try:
        data = resp.json()
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError(f"message.content is {type(text).__name__}")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _Final(
            INVALID_RESPONSE, f"POST {url}: HTTP 200 but not a chat completion ({exc}): {resp.text[:200]}"
        ) from None
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )


def build(spec: BackendSpec, **options: Any) -> OpenAIBackend:
    return OpenAIBackend(spec.model, spec.base_url, **options)
