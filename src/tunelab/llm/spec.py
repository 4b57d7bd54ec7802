"""Backend specs, the registry of backend kinds, and the one interface every backend speaks.

A spec string names a backend (the only place users pick a backend by name):

    openai:MODEL@BASE_URL     any OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp
                              server, OpenAI itself); without @BASE_URL: $OPENAI_BASE_URL, else OpenAI's
    local:MODEL               a tunelab model name (bundled, dir, .gguf, HF id) run in-process
    local:MODEL+ADAPTER_DIR   the same with a PEFT adapter applied

Every backend has `name` (the spec, safe to log: never a key), `identity()` (what a cache keys on) and

    complete(conversations, *, temperature=0.0, max_tokens=256, stop=None, seed=None, json_mode=False,
             on_result=None, json_schema=None) -> list[Completion]

which answers every conversation (a list of {"role", "content"} messages), in input order.
`json_schema` (one JSON schema for every conversation, or a list with one per conversation, None for
none) asks for replies matching it: the local backend decodes under it, an OpenAI-compatible server is
sent it; `json_mode` alone asks for any JSON object. `structured_output` says how a backend honours
them ("grammar", "json_schema", "json_object" or "prompt": the reply is only asked for in words). A failed
call is a Completion with `error` and `error_kind` set, never an exception and never an empty text
passed off as an answer; `on_result(i, completion)` is called as each one finishes (the cache uses it
to save answers one by one, so an interrupted run keeps what it already paid for).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import TunelabError

Message = dict[str, str]
Conversation = list[Message]
OnResult = Callable[[int, "Completion"], None]
JsonSchemas = dict[str, Any] | Sequence[dict[str, Any] | None] | None

# Why a call failed; the judge and the synth filters count failures by these names.
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
HTTP_ERROR = "http_error"
INVALID_RESPONSE = "invalid_response"  # a 200 whose body is not a chat completion
GENERATION_ERROR = "generation_error"  # the local model failed
ERROR_KINDS = (TIMEOUT, CONNECTION_ERROR, HTTP_ERROR, INVALID_RESPONSE, GENERATION_ERROR)


@dataclass
class Completion:
    """One answer, or why there is none (`error`, `error_kind`)."""

    text: str | None
    finish_reason: str | None = None  # "stop" | "length" | whatever the server said
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 1
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Completion:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def failure(cls, kind: str, message: str, latency_s: float = 0.0, attempts: int = 1) -> Completion:
        return cls(text=None, error=message, error_kind=kind, latency_s=latency_s, attempts=attempts)


@runtime_checkable
class Backend(Protocol):
    name: str

    def identity(self) -> dict[str, Any]: ...

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
    ) -> list[Completion]: ...


def schema_per_conversation(json_schema: JsonSchemas, n: int) -> list[dict[str, Any] | None]:
    """`json_schema` as one entry (schema or None) per conversation."""
    if json_schema is None or isinstance(json_schema, dict):
        return [json_schema] * n
    schemas = list(json_schema)
    if len(schemas) != n:
        raise TunelabError(f"{len(schemas)} JSON schemas for {n} conversations; give one per conversation")
    return schemas


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    model: str
    base_url: str | None = None
    adapter: str | None = None
    text: str = ""


_OPENAI = re.compile(r"^(?P<model>.+?)@(?P<url>https?://\S+)$")


def parse_spec(spec: str) -> BackendSpec:
    """`openai:MODEL@URL`, `openai:MODEL`, `local:MODEL` or `local:MODEL+ADAPTER` -> BackendSpec."""
    text = (spec or "").strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep or not rest.strip():
        raise TunelabError(
            f"backend spec '{spec}' is not KIND:MODEL; use e.g. openai:llama3.1@http://localhost:11434/v1 "
            f"or local:smollm2-135m-instruct (kinds: {', '.join(sorted(_REGISTRY))})"
        )
    if kind not in _REGISTRY:
        raise TunelabError(f"unknown backend kind '{kind}' in '{spec}'; known: {', '.join(sorted(_REGISTRY))}")
    rest = rest.strip()
    if kind == "openai":
        m = _OPENAI.match(rest)
        if m:
            return BackendSpec(kind, m["model"], base_url=m["url"].rstrip("/"), text=text)
        if "@" in rest:
            raise TunelabError(f"backend spec '{spec}': the part after @ must be an http(s):// base URL")
        return BackendSpec(kind, rest, text=text)
    if kind == "local":
        # The model name never contains '+'; an adapter path after the first '+' may.
        model, plus, adapter = rest.partition("+")
        if plus and not adapter.strip():
            raise TunelabError(f"backend spec '{spec}': nothing after '+'; give an adapter directory")
        return BackendSpec(kind, model.strip(), adapter=adapter.strip() or None, text=text)
    return BackendSpec(kind, rest, text=text)


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Backend]
    options: frozenset[str]
    help: str


_REGISTRY: dict[str, _Entry] = {}


def register_backend(kind: str, factory: Callable[..., Backend], options: Sequence[str], help: str = "") -> None:
    """Add a backend kind: `factory(spec: BackendSpec, **options)` builds it; `options` are the
    keyword options it accepts (anything else is a user error naming the allowed ones)."""
    _REGISTRY[kind] = _Entry(factory, frozenset(options), help)


def backend_kinds() -> dict[str, str]:
    return {k: e.help for k, e in sorted(_REGISTRY.items())}


def build_backend(spec: str | BackendSpec, **options: Any) -> Backend:
    parsed = spec if isinstance(spec, BackendSpec) else parse_spec(spec)
    entry = _REGISTRY[parsed.kind]
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - entry.options)
    if unknown:
        raise TunelabError(
            f"backend '{parsed.kind}' has no option(s) {', '.join(unknown)}; it accepts: "
            f"{', '.join(sorted(entry.options)) or 'none'}"
        )
    return entry.factory(parsed, **options)
