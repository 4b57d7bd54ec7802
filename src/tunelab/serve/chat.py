"""A chat conversation with a served model, in process: what `tunelab chat` drives from the terminal.

The session keeps the history, renders it with the engine's training chat template, submits it and
yields the answer's text as it is generated. An answer that is interrupted (Ctrl-C) is cancelled in the
engine and leaves no half turn in the history; a conversation that has outgrown the model's context is
an error that says to start over (/reset), rather than a silently cut history.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import TunelabError
from .engine import GenerationRequest


class ChatSession:
    def __init__(self, engine: Any, model: str, *, system: str | None = None, max_tokens: int = 512,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        if model not in engine.model_names():
            raise TunelabError(f"model '{model}' is not served by this engine ({', '.join(engine.model_names())})")
        if max_tokens < 1:
            raise TunelabError(f"max_tokens {max_tokens}: give at least 1")
        self.engine = engine
        self.model = model
        self.system = system
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.history: list[dict[str, str]] = []
        self.last_finish_reason: str | None = None
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str) -> Iterator[str]:
        """The answer to `text`, piece by piece; the turn joins the history once the answer is complete."""
        messages = [*self.history, {"role": "user", "content": text}]
        prompt_ids = self.engine.render_chat(messages)
        room = self.engine.context_length() - len(prompt_ids)
        if room < 1:
            raise TunelabError(f"the conversation is {len(prompt_ids)} tokens, more than the model's context "
                               f"({self.engine.context_length()}); /reset to start over")
        stream = self.engine.submit(GenerationRequest(
            model=self.model, prompt_ids=prompt_ids, max_tokens=min(self.max_tokens, room),
            temperature=self.temperature, top_p=self.top_p, seed=self.seed))
        parts: list[str] = []
        finished = False
        try:
            for delta in stream:
                if delta.text:
                    parts.append(delta.text)
                    yield delta.text
                if delta.finish_reason is not None:
                    if delta.finish_reason in ("error", "cancelled"):
                        raise TunelabError(f"generation {delta.finish_reason}: {delta.error or 'no answer'}")
                    self.last_finish_reason = delta.finish_reason
                    finished = True
                    break
        finally:
            if not finished:
                stream.cancel()  # interrupted (Ctrl-C, or the caller stopped reading): free the slot
        self.history = [*messages, {"role": "assistant", "content": "".join(parts)}]
