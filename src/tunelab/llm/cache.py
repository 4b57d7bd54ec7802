"""A disk cache of LLM calls, so re-runs are free and an interrupted run resumes where it stopped.

    cache = CallCache(tunelab_home() / "llm_calls")      # or any directory
    backend = CachedBackend(backend_from_spec("openai:llama3.1@http://localhost:11434/v1"), cache)

Layout: one JSON file per call, `<root>/<key[:2]>/<key>.json`, written atomically (temporary file +
rename), so a crash leaves either the whole answer or nothing, and concurrent writers of the same
key cannot corrupt it. The key is the sha256 of the backend's identity (kind, model, base URL; for a
local model the content hash of its files and adapter weights, its dtype and device kind), the messages
and every generation parameter (temperature, max_tokens, stop, seed, json_mode, and the conversation's JSON
schema when it has one: a key without a schema is the same as before schemas existed). Credentials are not part
of it: the identity shows a URL's password as "***" and never holds the API key, so two hosts or models
never share a key while a rotated key or password keeps the cache (the answers do not depend on it), and
no file holds a hash of a secret (the files themselves are masked by tunelab.io). Only successful answers
are stored: a failure is retried on the next run. A sampled call (temperature > 0) is cached like any other: re-running replays the same sample;
change the seed to draw again. A file that cannot be read (truncated by a full disk, edited by hand)
counts as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import write_json
from ..secrets import redact
from .spec import Backend, Completion, Conversation, JsonSchemas, OnResult, schema_per_conversation

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    from ..paths import tunelab_home

    return tunelab_home() / "llm_calls"


def call_key(identity: dict[str, Any], messages: Conversation, params: dict[str, Any]) -> str:
    # masked again here for backends registered from outside tunelab, whose identity may hold a credential
    payload = {"format": CACHE_FORMAT, "backend": redact(identity), "messages": messages, "params": params}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    """Completions on disk by key; counts hits, misses and writes (thread-safe)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
            comp = Completion.from_dict(data["completion"])
            if not comp.ok:
                raise ValueError("not a successful completion")
        except (OSError, ValueError, KeyError, TypeError):
            with self._lock:
                self.misses += 1
            return None
        comp.cached = True
        with self._lock:
            self.hits += 1
        return comp

    def put(self, key: str, completion: Completion, request: dict[str, Any] | None = None) -> None:
        if not completion.ok:
            return
        record = {"key": key, "completion": {**completion.to_dict(), "cached": False}}
        if request is not None:
            record["request"] = request  # for a person reading the cache; never holds credentials
        write_json(self.path(key), record)
        with self._lock:
            self.writes += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"dir": str(self.root), "hits": self.hits, "misses": self.misses, "writes": self.writes}


class CachedBackend:
    """Any backend behind a CallCache: hits are answered from disk, misses are sent to the backend
    and each answer is saved the moment it arrives."""

    def __init__(self, backend: Backend, cache: CallCache):
        self.backend = backend
        self.cache = cache
        self.name = backend.name

    def __getattr__(self, item: str) -> Any:  # model, kind, adapter_report ... of the wrapped backend
        return getattr(self.backend, item)

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

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
        params = {"temperature": temperature, "max_tokens": max_tokens, "stop": list(stop or []),
                  "seed": seed, "json_mode": json_mode}
        schemas = schema_per_conversation(json_schema, len(conversations))
        call_params = [params if s is None else {**params, "json_schema": s} for s in schemas]
        identity = self.backend.identity()
        keys = [call_key(identity, list(c), p) for c, p in zip(conversations, call_params, strict=True)]
        results: list[Completion | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        if on_result is not None:
            for i, r in enumerate(results):
                if r is not None:
                    on_result(i, r)
        if not todo:
            return results  # type: ignore[return-value]

        stored: set[int] = set()

        def store(j: int, comp: Completion) -> None:
            i = todo[j]
            self.cache.put(keys[i], comp, {"backend": identity, "messages": conversations[i],
                                           "params": call_params[i]})
            stored.add(i)
            results[i] = comp
            if on_result is not None:
                on_result(i, comp)

        fresh = self.backend.complete(
            [conversations[i] for i in todo], temperature=temperature, max_tokens=max_tokens, stop=stop,
            seed=seed, json_mode=json_mode, on_result=store,
            json_schema=None if json_schema is None else [schemas[i] for i in todo],
        )
        for j, comp in enumerate(fresh):
            if todo[j] not in stored:  # a backend that does not report answers one by one
                store(j, comp)
        return results  # type: ignore[return-value]
