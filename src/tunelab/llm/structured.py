"""JSON-constrained calls: ask for a JSON object matching a pydantic model, validate, retry what failed.

    class Rating(BaseModel):
        reason: str
        score: int = Field(ge=1, le=5)

    results = complete_structured(backend, conversations, Rating, retries=2)
    for r in results:
        r.value if r.ok else (r.error_kind, r.error)

Every call carries the reply's JSON schema (`json_schema`, by default the pydantic model's, bounded by
llm/schema.py so its longest reply fits `max_tokens`): a local backend decodes under it, so its replies
always parse; an OpenAI-compatible server gets it as `response_format` (servers that refuse it are
asked in JSON mode, then with the prompt alone). Models without a grammar often wrap JSON in code
fences, add a sentence before it, or get a field wrong. The reply's first JSON object is extracted (fences and surrounding prose tolerated) and validated;
an item that fails is asked again, with its own bad reply and the validation error appended to the
conversation, up to `retries` more times, and only failing items are re-sent. After that it is a
failure with its reason: invalid_json, schema_mismatch, or the transport's (http_error, timeout,
connection_error, invalid_response, generation_error). There is never a silent default value.
Transport failures are not retried here: the HTTP backend already retried them with backoff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .schema import bound_schema, reply_schema, shape
from .spec import Backend, Conversation, schema_per_conversation

INVALID_JSON = "invalid_json"
SCHEMA_MISMATCH = "schema_mismatch"

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


@dataclass
class StructuredResult:
    value: BaseModel | None
    text: str | None  # the last reply, as the model wrote it
    error_kind: str | None = None
    error: str | None = None
    attempts: int = 0
    latency_s: float = 0.0  # summed over attempts
    cached: bool = False  # every attempt came from the call cache

    @property
    def ok(self) -> bool:
        return self.value is not None and self.error_kind is None


def extract_json(text: str) -> Any:
    """The JSON object in a reply: the whole text, else the inside of a code fence, else the first
    `{...}` that parses. Raises ValueError saying what was wrong."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("the reply is empty")
    candidates = [stripped] + [m.group(1).strip() for m in _FENCE.finditer(stripped)]
    for cand in candidates:
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", stripped):
        try:
            obj, _ = decoder.raw_decode(stripped, m.start())
            return obj
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object found in the reply")


def parse_reply(text: str, schema: type[BaseModel]) -> tuple[BaseModel | None, str | None, str | None]:
    """(value, error_kind, error) for one reply."""
    try:
        obj = extract_json(text)
    except ValueError as exc:
        return None, INVALID_JSON, str(exc)
    if not isinstance(obj, dict):
        return None, SCHEMA_MISMATCH, f"expected a JSON object, got a JSON {type(obj).__name__}"
    try:
        return schema.model_validate(obj), None, None
    except ValidationError as exc:
        return None, SCHEMA_MISMATCH, _describe(exc)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(object)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_schemas(schema: type[BaseModel], json_schema: dict[str, Any] | Sequence[dict[str, Any]] | None,
                   n: int, max_tokens: int) -> list[dict[str, Any]]:
    """The bounded JSON schema each of n replies is decoded under: `json_schema` (one for all, or one
    per conversation) or else the pydantic model's own."""
    if json_schema is None or isinstance(json_schema, dict):
        one = bound_schema(json_schema or reply_schema(schema), max_tokens)
        return [one] * n
    return [bound_schema(s or reply_schema(schema), max_tokens) for s in schema_per_conversation(json_schema, n)]


def complete_structured(
    backend: Backend,
    conversations: Sequence[Conversation],
    schema: type[BaseModel],
    *,
    retries: int = 2,
    temperature: float = 0.0,
    max_tokens: int = 512,
    check: Callable[[int, BaseModel], str | None] | None = None,
    seed: int | None = None,
    json_schema: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    on_done: Callable[[int, StructuredResult], None] | None = None,
) -> list[StructuredResult]:
    """Answers to every conversation as `schema` instances (or failures), in input order.

    `check(i, value)` may reject a valid-looking value for item i with a message (e.g. a list whose
    length must match the question's); a rejection is a schema_mismatch and is retried like one.
    `json_schema` narrows what the replies are decoded under (the item count asked for, a label set),
    one schema for all or one per conversation; it must describe replies `schema` accepts.
    `on_done(i, result)` is called once per item, as soon as its result is final (valid, or failed with
    no retry left), while the backend still answers the others: what a progress display counts."""
    n = len(conversations)
    schemas = decode_schemas(schema, json_schema, n, max_tokens)
    convs = [list(c) for c in conversations]
    out: list[StructuredResult] = [StructuredResult(None, None) for _ in range(n)]
    all_cached = [True] * n
    pending = list(range(n))
    retry: list[int] = []
    settled: set[int] = set()
    last = False

    def settle(j: int, comp: Any) -> None:
        # called by the backend as each answer of this round comes back (and below for any it did not report)
        settled.add(j)
        i = pending[j]
        if _take(out[i], comp, i, schema, check, all_cached) and not last:
            convs[i] = convs[i] + [
                {"role": "assistant", "content": comp.text or ""},
                # its shape, not the raw JSON schema: small models shown a schema copy it back
                {"role": "user", "content": (
                    f"That reply could not be used: {out[i].error}. Reply again with only one JSON object "
                    f"of this form, and nothing else: {shape(schemas[i])}"
                )},
            ]
            retry.append(i)
        elif on_done is not None:
            on_done(i, out[i])

    for round_no in range(retries + 1):
        if not pending:
            break
        retry, settled, last = [], set(), round_no == retries
        comps = backend.complete([convs[i] for i in pending], temperature=temperature, max_tokens=max_tokens,
                                 seed=seed, json_mode=True, json_schema=[schemas[i] for i in pending],
                                 on_result=settle)
        for j, comp in enumerate(comps):
            if j not in settled:  # a backend that does not report answers one by one
                settle(j, comp)
        pending = sorted(retry)  # in input order, whatever order the answers came back in
    return out


def done_counter(on_progress: Callable[[int, int], None] | None, total: int) -> Callable[..., None]:
    """An `on_done` that reports the running count of final results as on_progress(done, total), from 0
    of total reported now (so a slow first batch shows as started); a no-op without on_progress. It may
    serve several complete_structured calls that make up one task of `total` items."""
    if on_progress is None:
        return lambda *_: None
    done = 0
    on_progress(0, total)

    def tick(*_: Any) -> None:
        nonlocal done
        done += 1
        on_progress(done, total)

    return tick


def _take(res: StructuredResult, comp: Any, i: int, schema: type[BaseModel],
          check: Callable[[int, BaseModel], str | None] | None, all_cached: list[bool]) -> bool:
    """Record one attempt's answer in `res`; True when it is a reply to ask again (it did not parse or
    validate), False when it is final (a valid value, or a transport failure, not retried here)."""
    res.attempts += 1
    res.latency_s += comp.latency_s
    all_cached[i] = all_cached[i] and comp.cached
    res.cached = all_cached[i]
    if not comp.ok:
        res.value, res.text, res.error_kind, res.error = None, comp.text, comp.error_kind, comp.error
        return False
    value, kind, error = parse_reply(comp.text or "", schema)
    if value is not None and check is not None:
        problem = check(i, value)
        if problem:
            value, kind, error = None, SCHEMA_MISMATCH, problem
    res.text = comp.text
    if value is not None:
        res.value, res.error_kind, res.error = value, None, None
        return False
    res.value, res.error_kind, res.error = None, kind, error
    return True
