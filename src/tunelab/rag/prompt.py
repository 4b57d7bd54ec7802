"""The RAG prompt: retrieved chunks, with their sources, put into the last user turn.

    messages = rag_messages(messages, hits, tokenizer, budget_tokens=600)
    prompt = build_rag_prompt(messages, hits, tokenizer, 600)   # also .used, .dropped, .context_tokens

The context is the hits in rank order, each as `[n] <document> > <heading path>` and its text, as many as
fit in `budget_tokens` counted with the generating model's tokenizer (the whole context block, labels
included). A chunk that does not fit whole is left out, never cut, and a smaller one after it may still
fit. The template is versioned (RAG_PROMPT_VERSION, text in prompt.txt next to this module) and can be
replaced by a file (RagConfig.prompt_template) with the placeholders {context} and {question}; a custom
template's version is `custom-<sha256 prefix>` so results say which prompt produced them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..documents.chunk import token_counter
from ..errors import TunelabError

RAG_PROMPT_VERSION = "rag-v1"
# sha256 of prompt.txt for RAG_PROMPT_VERSION: a test fails if the text changes without a version bump.
RAG_PROMPT_SHA256 = "dd8134a463ef69d342d180b4316150bba68e1aece727f21d4477ef593550eb51"
DEFAULT_TEMPLATE = Path(__file__).with_name("prompt.txt")
NO_CONTEXT = "(no passages retrieved)"
PLACEHOLDERS = ("{context}", "{question}")
_PLACEHOLDER = re.compile(r"\{(context|question)\}")


@dataclass(frozen=True)
class Template:
    text: str
    version: str
    path: Path


def load_template(path: str | Path | None = None) -> Template:
    """The default template, or a user's file (which must use both placeholders)."""
    file = Path(path).expanduser() if path else DEFAULT_TEMPLATE
    try:
        raw = file.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise TunelabError(f"RAG prompt template {file} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TunelabError(f"RAG prompt template {file} is not UTF-8 text") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise TunelabError(f"RAG prompt template {file} lacks the placeholder(s) {', '.join(missing)}; "
                           "it needs {context} (the retrieved passages) and {question} (the user's turn)")
    version = RAG_PROMPT_VERSION if path is None else f"custom-{hashlib.sha256(raw).hexdigest()[:12]}"
    return Template(text.rstrip("\n"), version, file)


def render(template: Template, context: str, question: str) -> str:
    # One pass over the template, not str.format: braces elsewhere in a user's template stay literal, and
    # a "{question}" inside a document (or "{context}" inside a question) is never substituted.
    values = {"context": context, "question": question}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template.text)


def format_hit(number: int, hit: Any) -> str:
    return f"[{number}] {hit.source}\n{hit.text.strip()}"


@dataclass
class RagPrompt:
    messages: list[dict[str, Any]]
    used: list[Any]  # the hits in the context, in order
    dropped: list[Any]  # hits left out because they did not fit
    context_tokens: int
    template_version: str

    def summary(self) -> dict[str, Any]:
        return {"sources": [h.source for h in self.used], "chunk_ids": [h.chunk_id for h in self.used],
                "dropped": [h.chunk_id for h in self.dropped], "context_tokens": self.context_tokens,
                "prompt_version": self.template_version}


def build_rag_prompt(messages: Sequence[dict[str, Any]], hits: Sequence[Any], tokenizer: Any,
                     budget_tokens: int, template: Template | str | Path | None = None) -> RagPrompt:
    """A copy of `messages` whose last user turn carries the context; see the module doc."""
    if budget_tokens <= 0:
        raise TunelabError(f"the RAG context budget must be > 0 tokens, got {budget_tokens}")
    if not isinstance(template, Template):
        template = load_template(template)
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if last_user is None:
        raise TunelabError("RAG needs a user turn to put the context into; the conversation has none")
    count = token_counter(tokenizer)

    blocks: list[str] = []
    used, dropped = [], []
    tokens = 0
    for hit in sorted(hits, key=lambda h: h.rank):
        candidate = "\n\n".join([*blocks, format_hit(len(blocks) + 1, hit)])
        n = count(candidate)
        if n <= budget_tokens:
            blocks.append(format_hit(len(blocks) + 1, hit))
            used.append(hit)
            tokens = n
        else:
            dropped.append(hit)
    context = "\n\n".join(blocks) if blocks else NO_CONTEXT

    out = [dict(m) for m in messages]
    question = str(out[last_user].get("content") or "")
    out[last_user]["content"] = render(template, context, question)
    return RagPrompt(out, used, dropped, tokens, template.version)


def rag_messages(messages: Sequence[dict[str, Any]], hits: Sequence[Any], tokenizer: Any, budget_tokens: int,
                 template: Template | str | Path | None = None) -> list[dict[str, Any]]:
    """`messages` with the retrieved context in the last user turn (see build_rag_prompt for details)."""
    return build_rag_prompt(messages, hits, tokenizer, budget_tokens, template).messages
