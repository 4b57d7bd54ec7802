"""The OpenAI wire format the server speaks: request bodies (validated), errors, responses and stream chunks.

Request bodies are pydantic models in strict mode, so a wrong type is an error and not a silent coercion
(`"stream": "yes"` is refused rather than read as true). Fields this server does not implement and that
would change the answer (tools, JSON mode, log-probs, several choices) are refused with a 400 naming the
field; fields that do not change the answer (user, metadata, ...) are ignored, as vLLM and llama.cpp's
server do, so ordinary client code works unchanged.

Every error is OpenAI's shape, {"error": {"message", "type", "param", "code"}}, whatever raised it: this
module turns pydantic's errors into one such message (field path and reason), and malformed JSON into
another, instead of FastAPI's default 422 {"detail": [...]}.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# OpenAI's own limit on stop sequences.
MAX_STOP = 4
ROLES = ("system", "user", "assistant")


class APIError(Exception):
    """An error reply: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def unknown_model(name: str, served: list[str]) -> APIError:
    return APIError(404, f"The model `{name}` does not exist. This server serves: {', '.join(served)}.",
                    param="model", code="model_not_found")


# -- request bodies -----------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


GREEDY_DEFAULT = 0.0


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = None
    # Not given: greedy (GREEDY_DEFAULT), as tunelab evaluated the model and as the exported Modelfile says;
    # OpenAI's own default of 1.0 makes a small model's answers noise unlike the scores it was chosen on.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | int | None = None

    def sampling_temperature(self) -> float:
        return GREEDY_DEFAULT if self.temperature is None else self.temperature

    def stops(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP:
            raise APIError(400, f"'stop' holds {len(stop)} sequences; at most {MAX_STOP} are allowed",
                           param="stop")
        if any(not s for s in stop):
            raise APIError(400, "'stop' sequences must not be empty", param="stop")
        return stop

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage")) and self.stream

    def check_supported(self) -> None:
        if self.n != 1:
            raise APIError(400, f"n={self.n}: this server returns one choice per request (n=1)", param="n")
        if self.logprobs:
            raise APIError(400, "log-probabilities are not supported by this server", param="logprobs")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "'stream_options' is only allowed with stream=true", param="stream_options")


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools or self.functions:
            raise APIError(400, "tool and function calling are not supported by this server",
                           param="tools" if self.tools else "functions")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise APIError(400, "only response_format {\"type\": \"text\"} is supported by this server",
                           param="response_format")

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation as the training template takes it; OpenAI's `developer` role is its newer
        name for `system`."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = 16  # OpenAI's default for the legacy completions endpoint
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def requested_max_tokens(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise APIError(400, "echo is not supported by this server", param="echo")
        if self.suffix:
            raise APIError(400, "suffix (insertion) is not supported by this server", param="suffix")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported by this server", param="best_of")

    def prompt_value(self) -> str | list[int]:
        """The one prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if p and all(isinstance(x, str) for x in p):
            if len(p) != 1:
                raise APIError(400, f"'prompt' holds {len(p)} prompts; this server takes one per request",
                               param="prompt")
            return p[0]  # type: ignore[return-value]
        if not p:
            raise APIError(400, "'prompt' is empty", param="prompt")
        return list(p)  # type: ignore[arg-type]


class FeedbackRequest(_Body):
    completion_id: str = Field(min_length=1)
    rating: Literal[-1, 0, 1] | None = None
    preferred_answer: str | None = None
    note: str | None = None


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """A request body as `model`, or an APIError in OpenAI's shape."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def validation_error(errors: list[Any]) -> APIError:
    """pydantic / FastAPI validation errors as one 400: the first error's field and reason, and a count."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    # pydantic names the union member it tried (`str`, `list[TextPart]`, `literal[...]`): not a field
    loc = [p for p in loc if not (p.startswith(("list[", "literal[", "function-")) or p in ("str", "int"))]
    param = ".".join(loc) or None
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    what = f"'{param}': " if param else ""
    code = "invalid_type" if "type" in str(first.get("type", "")) else "invalid_value"
    if first.get("type") == "missing":
        code = "missing_field"
    return APIError(400, f"{what}{first.get('msg', 'invalid value')}{more}", param=param, code=code)


# -- responses ----------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Reply:
    """Builds the response or the stream chunks of one request, chat or legacy completions."""

    def __init__(self, chat: bool, completion_id: str, model: str):
        self.chat = chat
        self.id = completion_id
        self.model = model
        self.created = int(time.time())

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def full(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            body = self._envelope("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            body = self._envelope("text_completion")
        return {**body, "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False,
              with_usage: bool = False) -> dict[str, Any]:
        """One stream chunk; the chat stream's first chunk carries the assistant role, as OpenAI's does."""
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            body = self._envelope("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            body = self._envelope("text_completion")
        body["choices"] = [choice]
        if with_usage:
            body["usage"] = None  # OpenAI: null on every chunk but the last when include_usage is on
        return body

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event; `[DONE]` is sent as is."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
