"""The serving engine interface, and the pieces every engine shares.

The HTTP server (serve.app), the terminal chat and the load bench talk to an engine only through what is
defined here: `GenerationRequest` in, a `Stream` of `Delta`s out, and the `Engine` protocol. The engines
themselves live in serve.batching (transformers, continuous batching), serve.llamacpp and serve.vllm;
serve.engines picks one by name.

Shared here, so every engine streams text the same way:
- `TextTracker`: incremental detokenization (a multi-byte character split over several tokens, or a
  tokenizer that merges pieces across token boundaries, is emitted only once it is complete) and stop
  strings (the text is cut before the earliest stop string, and any text that could still turn out to be
  the start of a stop string is held back until it cannot).
- `Stream`: the thread-safe hand-off from the engine's worker thread to one consumer, blocking (`for d in
  stream`) or async (`async for d in stream`, no thread blocked per request). A consumer that stops
  iterating before the end cancels the request, so a client that disconnects frees its batch slot.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import TunelabError

FINISH_REASONS = ("stop", "length", "cancelled", "error")


@dataclass
class GenerationRequest:
    model: str  # a served model name: the base's name or an adapter's name
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # stop strings (end-of-turn tokens always stop)
    seed: int | None = None


@dataclass
class Delta:
    text: str  # text new since the previous Delta (a stop string is never emitted)
    token_ids: list[int]  # generated tokens since the previous Delta (end-of-turn tokens not included)
    finish_reason: str | None  # None while generating; then "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int  # tokens generated so far, an end-of-turn token included (as HF generate counts)
    error: str | None = None


class Engine(Protocol):
    kind: str  # "transformers" | "llama.cpp" | "vllm"
    tokenizer: Any  # the Hugging Face tokenizer (counting tokens, templates)

    def model_names(self) -> list[str]: ...  # base name first, then adapter names
    def context_length(self) -> int: ...
    def render_chat(self, messages: list[dict[str, str]]) -> list[int]: ...  # the training chat template
    def submit(self, request: GenerationRequest) -> Stream: ...  # thread-safe; TunelabError for unknown model
    def stats(self) -> dict[str, float]: ...  # at least queue_depth, batch_size (running rows)
    def close(self) -> None: ...


class EngineBase:
    """What every engine does alike: its served names (base first), its context, chat rendering with the
    training template, and turning a checked request into a Stream."""

    def __init__(self, tokenizer: Any, base_name: str, adapter_names: list[str], context: int,
                 notes: list[str] | None = None):
        self.tokenizer = tokenizer
        self.base_name = base_name
        self._adapter_names = list(adapter_names)
        self._context = context
        self.notes = list(notes or [])  # what loading said (a template difference, an untrained adapter)
        self._request_ids = itertools.count()

    def model_names(self) -> list[str]:
        return [self.base_name, *self._adapter_names]

    def context_length(self) -> int:
        return self._context

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_ids(self.tokenizer, messages)

    def _open(self, request: GenerationRequest) -> tuple[Stream, int]:
        """A Stream for a valid request, and the max_tokens it can have (TunelabError if invalid)."""
        max_new = check_request(request, self.model_names(), self._context)
        return Stream(f"req-{next(self._request_ids)}", len(request.prompt_ids)), max_new


def check_request(request: GenerationRequest, names: list[str], context: int) -> int:
    """Validate a request against the served models and the context; the max_tokens it can really have
    (clipped so prompt + completion fit the context: such a request ends with finish_reason "length")."""
    if request.model not in names:
        raise TunelabError(f"unknown model '{request.model}'; this server serves {', '.join(names)}")
    problems = []
    if not request.prompt_ids:
        problems.append("the prompt has no tokens")
    elif len(request.prompt_ids) >= context:
        problems.append(f"the prompt has {len(request.prompt_ids)} tokens but the model's context is {context}")
    if request.max_tokens < 1:
        problems.append(f"max_tokens must be at least 1 (got {request.max_tokens})")
    if request.temperature < 0:
        problems.append(f"temperature must be 0 (greedy) or positive (got {request.temperature})")
    if not 0 < request.top_p <= 1:
        problems.append(f"top_p must be in (0, 1] (got {request.top_p})")
    if any(not s for s in request.stop):
        problems.append("stop strings must not be empty")
    if problems:
        raise TunelabError("invalid generation request: " + "; ".join(problems))
    return min(request.max_tokens, context - len(request.prompt_ids))


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """`messages` rendered with the tokenizer's chat template, ending with the assistant turn's opening."""
    if not getattr(tokenizer, "chat_template", None):
        raise TunelabError("this model has no chat template, so chat messages cannot be rendered; "
                           "use the completions API with raw text")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja's raise_exception (an unsupported role) and template errors
        raise TunelabError(f"the chat template cannot render these messages: {exc}") from None
    # the rendered text carries its own special tokens (BOS where the template writes one)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class TextTracker:
    """One request's generated text: incremental detokenization and stop strings.

    `add(token)` returns the text that may be shown now (possibly ""), and sets `stopped` when a stop
    string completed; `flush()` returns the held-back rest when the request ends for another reason.
    Detokenizing follows TGI/vLLM: decode from a prefix offset a few tokens back, so the decoder sees the
    context it needs (SentencePiece's leading spaces, byte-level pieces of one character), and emit only
    when the new text does not end in U+FFFD (an incomplete UTF-8 sequence).
    """

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.longest = max((len(s) for s in self.stop), default=0)
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # all decoded text so far (before any stop string)
        self.sent = 0  # how much of `text` has been returned
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.tokens.append(token)
        prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # no complete new character yet
        before = len(self.text)
        self.text += full[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        if self.stop:
            # a stop string completed by this text starts at most len(stop)-1 characters before it
            start = max(0, before - self.longest + 1)
            hits = [at for s in self.stop if (at := self.text.find(s, start)) != -1]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self._take(len(self.text))
        return self._take(len(self.text) - self._held())

    def _held(self) -> int:
        """Length of the longest tail of the text that is the start of some stop string."""
        for n in range(min(self.longest - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def _take(self, upto: int) -> str:
        out = self.text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return out

    def flush(self) -> str:
        """Everything not yet returned (a request ending without a stop string)."""
        if not self.stopped:
            tail = self._decode(self.tokens[self.prefix_offset :])
            prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
            if len(tail) > len(prefix):  # an incomplete character at the very end is shown as decoded
                self.text += tail[len(prefix) :]
                self.prefix_offset = self.read_offset = len(self.tokens)
        return self._take(len(self.text))


class Generation:
    """One request while it generates: picked tokens in, Deltas out on its stream.

    Every engine that picks tokens itself (transformers, llama.cpp) feeds them here, so end-of-turn
    tokens, stop strings, max_tokens and text streaming behave the same on each."""

    def __init__(self, stream: Stream, request: GenerationRequest, max_new: int, stop_ids: set[int], tokenizer: Any):
        self.stream = stream
        self.request = request
        self.max_new = max_new
        self.stop_ids = stop_ids
        self.tracker = TextTracker(tokenizer, request.stop)
        self.generated = 0  # tokens picked so far, an end-of-turn token included
        self.unsent: list[int] = []  # token ids not yet carried by a Delta

    def advance(self, tok: int) -> bool:
        """Add one picked token and stream what it adds; False when the request is done (and finished)."""
        self.generated += 1
        if tok in self.stop_ids:
            self.finish("stop")
            return False
        self.unsent.append(tok)
        text = self.tracker.add(tok)
        if self.tracker.stopped:
            self.finish("stop", text)
        elif self.generated >= self.max_new:
            self.finish("length", text)
        elif text:
            self.stream.push(Delta(text, self.unsent, None, self.stream.prompt_tokens, self.generated))
            self.unsent = []
        return not self.stream.finished

    def finish(self, reason: str, text: str = "", error: str | None = None) -> None:
        text += self.tracker.flush()  # text held back for a stop string that never completed
        self.stream.push(Delta(text, self.unsent, reason, self.stream.prompt_tokens, self.generated, error))
        self.unsent = []


class Stream:
    """One submitted request: the engine pushes Deltas, one consumer iterates them (blocking or async).

    Iterating ends after the Delta with a finish_reason. Leaving the loop early (a `break`, a closed
    async generator when an HTTP client disconnects) cancels the request."""

    def __init__(self, request_id: str, prompt_tokens: int):
        self.id = request_id
        self.prompt_tokens = prompt_tokens
        self._items: deque[Delta] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancelled = threading.Event()
        self.finished = False

    # -- engine side ---------------------------------------------------------------------------------
    def push(self, delta: Delta) -> None:
        with self._cond:
            if self.finished:
                return
            self.finished = delta.finish_reason is not None
            self._items.append(delta)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the consumer's event loop is closed; nobody is listening
                pass

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- consumer side -------------------------------------------------------------------------------
    def cancel(self) -> None:
        """The client is gone: the request leaves the batch at the next step (its slot is freed)."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[Delta]:
        done = False
        try:
            while True:
                with self._cond:
                    while not self._items:
                        self._cond.wait()
                    delta = self._items.popleft()
                done = delta.finish_reason is not None
                yield delta
                if done:
                    return
        finally:
            if not done:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Delta]:
        done = False
        try:
            while True:
                with self._cond:
                    delta = self._items.popleft() if self._items else None
                    if delta is None:
                        event = asyncio.Event()
                        self._waiters.append((asyncio.get_running_loop(), event))
                if delta is None:
                    await event.wait()
                    continue
                done = delta.finish_reason is not None
                yield delta
                if done:
                    return
        finally:
            if not done:
                self.cancel()

    def result(self) -> tuple[str, list[int], Delta]:
        """Block until the end: (the whole text, all token ids, the final Delta)."""
        text, ids = [], []
        last = None
        for last in self:
            text.append(last.text)
            ids.extend(last.token_ids)
        assert last is not None
        return "".join(text), ids, last
