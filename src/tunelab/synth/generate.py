"""Generation modes: what the teacher is asked about a chunk, the JSON schema its reply must match,
and how a validated reply becomes candidate records carrying their provenance.

    mode = MODES["qa"]
    replies = ask_teacher(backend, template, chunks, mode, per_chunk=3, ...)
    for reply in replies:
        reply.result.ok, reply.result.error_kind      # a failure has its reason; no candidates then
        reply.candidates                              # Candidate: record + what the filters check

Modes and the records they make (the record kinds of tunelab.data.records):

    qa           {"pairs": [{"question", "answer"}]}                       chat (user, assistant)
    instruction  {"items": [{"instruction", "input", "response"}]}         chat (user, assistant)
    multi_turn   {"conversations": [{"turns": [{"user", "assistant"}]}]}   chat (2+ exchanges)
    labelled     {"examples": [{"text", "label"}]}, label in the set        label
    preference   {"items": [{"question", "chosen", "rejected"}]}           preference

Every string must be non-blank; a label must be one of the set (matched ignoring case, written as the
set spells it). The teacher is asked (and a local teacher decoded, llm/structured.py) under a narrower
JSON schema than the one replies are validated against: exactly the number of items asked for, the
number of turns asked for, labels from the set; so a constrained teacher's reply keeps every item. A reply that breaks the schema is re-asked (tunelab.llm.structured) and then counted
as a failure by reason; nothing of it becomes a record. A reply holding more items than asked for is
cut to the number asked for (counted as `extra_items`); a bare item without the list around it (small
teachers write `{"question": ..., "answer": ...}` when asked for one) is read as a list of one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field, StringConstraints, model_validator

from ..data.records import Record
from ..documents.chunk import Chunk
from ..llm.schema import reply_schema
from ..llm.spec import Backend
from ..llm.structured import StructuredResult, complete_structured
from .templates import PromptTemplate

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


# -- reply schemas -------------------------------------------------------------------------------------


class _ListReply(BaseModel):
    """A reply holding its items in a list under LIST_KEY."""

    LIST_KEY: ClassVar[str]
    ITEM_KEYS: ClassVar[tuple[str, ...]]

    @model_validator(mode="before")
    @classmethod
    def _bare_item(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.LIST_KEY not in data and all(k in data for k in cls.ITEM_KEYS):
            return {cls.LIST_KEY: [data]}
        return data

    def items(self) -> list[Any]:
        return list(getattr(self, self.LIST_KEY))


class QAPair(BaseModel):
    question: NonBlank
    answer: NonBlank


class QAReply(_ListReply):
    LIST_KEY: ClassVar[str] = "pairs"
    ITEM_KEYS: ClassVar[tuple[str, ...]] = ("question", "answer")
    pairs: list[QAPair] = Field(min_length=1)


class InstructionItem(BaseModel):
    instruction: NonBlank
    input: str = ""
    response: NonBlank


class InstructionReply(_ListReply):
    LIST_KEY: ClassVar[str] = "items"
    ITEM_KEYS: ClassVar[tuple[str, ...]] = ("instruction", "response")
    items_: list[InstructionItem] = Field(min_length=1, alias="items")

    def items(self) -> list[Any]:
        return list(self.items_)


class Turn(BaseModel):
    user: NonBlank
    assistant: NonBlank


class Dialogue(BaseModel):
    turns: list[Turn] = Field(min_length=2)


class MultiTurnReply(_ListReply):
    LIST_KEY: ClassVar[str] = "conversations"
    ITEM_KEYS: ClassVar[tuple[str, ...]] = ("turns",)
    conversations: list[Dialogue] = Field(min_length=1)


class LabelledExample(BaseModel):
    text: NonBlank
    label: NonBlank


class LabelledReply(_ListReply):
    LIST_KEY: ClassVar[str] = "examples"
    ITEM_KEYS: ClassVar[tuple[str, ...]] = ("text", "label")
    examples: list[LabelledExample] = Field(min_length=1)


class PreferenceItem(BaseModel):
    question: NonBlank
    chosen: NonBlank
    rejected: NonBlank


class PreferenceReply(_ListReply):
    LIST_KEY: ClassVar[str] = "items"
    ITEM_KEYS: ClassVar[tuple[str, ...]] = ("question", "chosen", "rejected")
    items_: list[PreferenceItem] = Field(min_length=1, alias="items")

    def items(self) -> list[Any]:
        return list(self.items_)


# -- candidates ----------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A generated record before filtering, with the texts each filter looks at."""

    record: Record
    chunk: Chunk
    questions: list[str]  # user-side texts; the first must be about the chunk, none may cite "the text"
    answers: list[str]  # replies that must be grounded in the chunk
    prompt_text: str  # what two records must not share (exactly or nearly) to both be kept
    rejected: str | None = None  # preference: the reply that must NOT be grounded
    source_extra: str = ""  # instruction input: material the response may also draw on
    checks: dict[str, Any] = field(default_factory=dict)  # what the filters measured, kept in meta

    def source_text(self) -> str:
        """What grounding compares with: the heading path (context a reader of the chunk has) and text."""
        heading = " > ".join(self.chunk.heading)
        return "\n".join(t for t in (heading, self.chunk.text, self.source_extra) if t)

    def to_row(self) -> dict[str, Any]:
        """The output row in a format `tunelab data prepare` reads; provenance rides in `meta`."""
        rec = self.record
        meta = {**rec.meta, "grounding": self.checks} if self.checks else dict(rec.meta)
        if rec.kind == "chat":
            return {"messages": rec.messages, "meta": meta}
        if rec.kind == "label":
            return {"text": rec.text, "label": rec.label, "meta": meta}
        return {"prompt": rec.messages, "chosen": rec.chosen, "rejected": rec.rejected, "meta": meta}


@dataclass(frozen=True)
class Provenance:
    teacher: str
    prompt_version: str
    mode: str

    def meta(self, chunk: Chunk) -> dict[str, Any]:
        return {"source": chunk.doc, "chunk_id": chunk.id, "heading": " > ".join(chunk.heading),
                "teacher": self.teacher, "prompt_version": self.prompt_version, "synth_mode": self.mode}


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _qa(item: QAPair, chunk: Chunk, meta: dict) -> Candidate:
    rec = Record("chat", messages=[_user(item.question), _assistant(item.answer)], meta=meta)
    return Candidate(rec, chunk, [item.question], [item.answer], item.question)


def _instruction(item: InstructionItem, chunk: Chunk, meta: dict) -> Candidate:
    extra = item.input.strip()
    prompt = f"{item.instruction}\n\n{extra}" if extra else item.instruction
    rec = Record("chat", messages=[_user(prompt), _assistant(item.response)], meta=meta)
    return Candidate(rec, chunk, [item.instruction], [item.response], prompt, source_extra=extra)


def _multi_turn(item: Dialogue, chunk: Chunk, meta: dict) -> Candidate:
    messages = [m for t in item.turns for m in (_user(t.user), _assistant(t.assistant))]
    users = [t.user for t in item.turns]
    return Candidate(Record("chat", messages=messages, meta=meta), chunk, users,
                     [t.assistant for t in item.turns], "\n".join(users))


def _labelled(item: LabelledExample, chunk: Chunk, meta: dict) -> Candidate:
    # the label was checked against the set (and written as the set spells it) before we get here
    return Candidate(Record("label", text=item.text, label=item.label, meta=meta), chunk, [item.text], [],
                     item.text)


def _preference(item: PreferenceItem, chunk: Chunk, meta: dict) -> Candidate:
    rec = Record("preference", messages=[_user(item.question)], chosen=item.chosen, rejected=item.rejected,
                 meta=meta)
    return Candidate(rec, chunk, [item.question], [item.chosen], item.question, rejected=item.rejected)


@dataclass(frozen=True)
class Mode:
    name: str
    kind: str  # the record kind it makes
    schema: type[_ListReply]
    build: Callable[[Any, Chunk, dict], Candidate]
    placeholders: tuple[str, ...]  # what its prompt must use


MODES: dict[str, Mode] = {
    "qa": Mode("qa", "chat", QAReply, _qa, ("text", "n")),
    "instruction": Mode("instruction", "chat", InstructionReply, _instruction, ("text", "n")),
    "multi_turn": Mode("multi_turn", "chat", MultiTurnReply, _multi_turn, ("text", "n", "turns")),
    "labelled": Mode("labelled", "label", LabelledReply, _labelled, ("text", "n", "labels")),
    "preference": Mode("preference", "preference", PreferenceReply, _preference, ("text", "n")),
}


# -- asking the teacher --------------------------------------------------------------------------------


@dataclass
class ChunkReply:
    chunk: Chunk
    result: StructuredResult
    candidates: list[Candidate] = field(default_factory=list)
    extra_items: int = 0  # items beyond the number asked for, cut off


def _label_check(labels: Sequence[str]) -> Callable[[int, BaseModel], str | None]:
    canonical = {x.casefold(): x for x in labels}

    def check(_i: int, value: BaseModel) -> str | None:
        bad = sorted({ex.label for ex in value.items() if ex.label.casefold() not in canonical})
        if bad:
            return f"label(s) {', '.join(map(repr, bad))} not in the label set: {', '.join(labels)}"
        for ex in value.items():
            ex.label = canonical[ex.label.casefold()]
        return None

    return check


def decode_schema(mode: Mode, per_chunk: int, turns: int = 3, labels: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON schema a reply is asked for under: the mode's reply schema narrowed to this request."""
    schema = reply_schema(mode.schema)
    items = schema["properties"][mode.schema.LIST_KEY]
    items["minItems"] = items["maxItems"] = per_chunk
    fields = items["items"]["properties"]
    if mode.name == "multi_turn":
        fields["turns"]["minItems"] = fields["turns"]["maxItems"] = turns
    if mode.name == "labelled" and labels:
        fields["label"] = {"enum": list(labels)}
    return schema


def ask_teacher(
    backend: Backend,
    template: PromptTemplate,
    chunks: Sequence[Chunk],
    mode: Mode,
    provenance: Provenance,
    *,
    per_chunk: int,
    turns: int = 3,
    labels: Sequence[str] = (),
    retries: int = 2,
    temperature: float = 0.0,
    max_tokens: int = 768,
    seed: int | None = None,
) -> list[ChunkReply]:
    """One structured teacher call per chunk (concurrent or batched by the backend), in chunk order."""
    conversations = [
        template.render(text=c.text, source=c.source, n=per_chunk, turns=turns, labels=", ".join(labels))
        for c in chunks
    ]
    check = _label_check(labels) if mode.name == "labelled" else None
    results = complete_structured(backend, conversations, mode.schema, retries=retries, temperature=temperature,
                                  max_tokens=max_tokens, check=check, seed=seed,
                                  json_schema=decode_schema(mode, per_chunk, turns, labels))
    replies = []
    for chunk, result in zip(chunks, results, strict=True):
        reply = ChunkReply(chunk, result)
        if result.ok:
            items = result.value.items()
            reply.extra_items = max(0, len(items) - per_chunk)
            reply.candidates = [mode.build(item, chunk, provenance.meta(chunk)) for item in items[:per_chunk]]
        replies.append(reply)
    return replies
