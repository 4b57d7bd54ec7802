"""The canonical record: every input format becomes one of these, and every later stage reads them.

Kinds:
- chat: `messages` is a whole conversation ending with an assistant turn (alpaca, chat, ShareGPT and
  prompt/completion data all become chat records).
- text: `text` is raw text for causal (continued pre-training) tuning; loss on every token.
- label: `text` is the input, `label` the class name (classification).
- preference: `messages` is the prompt conversation (ending with a user turn), `chosen` and
  `rejected` the two assistant replies.

`meta` keeps provenance (source file and line, detected format) and any extra fields of the input
row (for example `source` document or `category`), so they survive into splits and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

KINDS = ("chat", "text", "label", "preference")
ROLES = ("system", "user", "assistant", "tool")


@dataclass(slots=True)
class Record:
    kind: str
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    label: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("messages", "text", "label", "chosen", "rejected"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        return cls(
            kind=row["kind"],
            messages=row.get("messages"),
            text=row.get("text"),
            label=row.get("label"),
            chosen=row.get("chosen"),
            rejected=row.get("rejected"),
            meta=dict(row.get("meta") or {}),
        )

    # -- text access used by cleaning, PII scrubbing and dedup -----------------------------------
    def iter_texts(self) -> Iterator[str]:
        """Every user-visible string of the record, in a fixed order."""
        if self.messages:
            for m in self.messages:
                yield m["content"]
        for name in ("text", "chosen", "rejected"):
            value = getattr(self, name)
            if value is not None:
                yield value

    def map_texts(self, fn: Callable[[str], str]) -> Record:
        """A copy with `fn` applied to every user-visible string (labels are left alone)."""
        return Record(
            kind=self.kind,
            messages=[{**m, "content": fn(m["content"])} for m in self.messages] if self.messages else self.messages,
            text=fn(self.text) if self.text is not None else None,
            label=self.label,
            chosen=fn(self.chosen) if self.chosen is not None else None,
            rejected=fn(self.rejected) if self.rejected is not None else None,
            meta=dict(self.meta),
        )

    def dedup_text(self) -> str:
        """The text two records must share to count as duplicates (roles and label included)."""
        parts: list[str] = []
        if self.messages:
            parts += [f"{m['role']}: {m['content']}" for m in self.messages]
        for name in ("text", "label", "chosen", "rejected"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}: {value}")
        return "\n".join(parts)

    # -- convenience views ---------------------------------------------------------------------
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation up to (not including) the final assistant turn."""
        if self.kind == "chat" and self.messages:
            return self.messages[:-1]
        if self.kind == "preference" and self.messages:
            return self.messages
        raise ValueError(f"a {self.kind} record has no prompt conversation")

    def reference(self) -> str | None:
        """The expected answer: the final assistant turn of a chat record, or the label."""
        if self.kind == "chat" and self.messages:
            return self.messages[-1]["content"]
        if self.kind == "label":
            return self.label
        if self.kind == "preference":
            return self.chosen
        return None
