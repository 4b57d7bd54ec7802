"""LLM backends for the judge and for synthetic-data teachers: one interface, chosen by a spec string.

    from tunelab.llm import backend_from_spec, complete_structured

    judge = backend_from_spec("openai:llama3.1@http://localhost:11434/v1", concurrency=4, cache=True)
    local = backend_from_spec("local:smollm2-135m-instruct", batch_size=16)
    tuned = backend_from_spec("local:smollm2-135m-instruct+runs/exp/train")   # with a PEFT adapter

    answers = judge.complete([[{"role": "user", "content": "Say hi"}]], temperature=0, max_tokens=32)
    answers[0].text, answers[0].error, answers[0].error_kind, answers[0].latency_s

    ratings = complete_structured(judge, conversations, RatingModel, retries=2)   # pydantic-validated

Spec strings: `openai:MODEL@BASE_URL` (any OpenAI-compatible server; the API key is read from
$OPENAI_API_KEY or the variable named by `api_key_env`), `openai:MODEL` (base URL from
$OPENAI_BASE_URL, else OpenAI), `local:MODEL[+ADAPTER_DIR]` (in-process through tunelab's Generator).

Options of backend_from_spec: for openai api_key_env, concurrency, timeout_s, max_retries,
backoff_s, backoff_max_s, breaker; for local batch_size, dtype, device, threads, chat_template.
`cache=True` (tunelab's default cache directory), a directory, or a CallCache puts the backend behind
the disk cache of calls (cache.py); `cache=None`/False does not.
"""

from __future__ import annotations

import os
from typing import Any

from . import local, openai_http
from .cache import CachedBackend, CallCache, call_key, default_cache_dir
from .local import LocalBackend
from .openai_http import OpenAIBackend, backoff_delay
from .spec import (
    CONNECTION_ERROR,
    ERROR_KINDS,
    GENERATION_ERROR,
    HTTP_ERROR,
    INVALID_RESPONSE,
    TIMEOUT,
    Backend,
    BackendSpec,
    Completion,
    backend_kinds,
    build_backend,
    parse_spec,
    register_backend,
)
from .structured import (
    INVALID_JSON,
    SCHEMA_MISMATCH,
    StructuredResult,
    complete_structured,
    done_counter,
    extract_json,
    parse_reply,
)

register_backend("openai", openai_http.build, openai_http.OPTIONS,
                 "an OpenAI-compatible chat-completions server: openai:MODEL@BASE_URL")
register_backend("local", local.build, local.OPTIONS,
                 "a tunelab model in-process: local:MODEL or local:MODEL+ADAPTER_DIR")


def backend_from_spec(spec: str, *, cache: bool | str | os.PathLike | CallCache | None = None,
                      **options: Any) -> Backend:
    """The backend a spec string names, with its options, optionally behind the call cache."""
    backend = build_backend(spec, **options)
    if cache is None or cache is False:
        return backend
    if cache is True:
        cache = CallCache(default_cache_dir())
    elif not isinstance(cache, CallCache):
        cache = CallCache(cache)
    return CachedBackend(backend, cache)


__all__ = [
    "CONNECTION_ERROR",
    "ERROR_KINDS",
    "GENERATION_ERROR",
    "HTTP_ERROR",
    "INVALID_JSON",
    "INVALID_RESPONSE",
    "SCHEMA_MISMATCH",
    "TIMEOUT",
    "Backend",
    "BackendSpec",
    "CachedBackend",
    "CallCache",
    "Completion",
    "LocalBackend",
    "OpenAIBackend",
    "StructuredResult",
    "backend_from_spec",
    "backend_kinds",
    "backoff_delay",
    "call_key",
    "complete_structured",
    "default_cache_dir",
    "done_counter",
    "extract_json",
    "parse_reply",
    "parse_spec",
    "register_backend",
]
