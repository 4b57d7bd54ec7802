"""Chunking: documents into retrieval- and generation-sized pieces, by heading first, then by tokens.

    chunks = chunk_documents(docs, max_tokens=256, overlap=32)                    # cheap regex tokens
    chunks = chunk_documents(docs, 256, 32, count_tokens=token_counter(hf_tok))   # a model's tokens

Each section (a heading's body) is chunked on its own, so a chunk never spans two headings. A section
within the budget is one chunk. A longer one is cut into sentences (a paragraph end, a list item or a
table row also ends one; a sentence longer than the budget is cut between words, never inside a word)
and packed greedily up to `max_tokens`; a cut prefers the last paragraph end that keeps the chunk at
least half full. Consecutive chunks of a section share up to `overlap` tokens of whole trailing
sentences (none when the last sentence alone is longer than that). A single word longer than the whole
budget is the only way a chunk exceeds it; its count says so.

A chunk's id is a content hash: sha256 of document path, heading path and text (16 hex digits), so it
is stable across runs and changes when any of the three does. `start`/`end` are character offsets into
`Document.text`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TunelabError
from .ingest import Document

# Bump when the algorithm changes which chunks a document gives (indexes built before re-embed).
CHUNKER_VERSION = 1

TokenCounter = Callable[[str], int]

_REGEX_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def regex_token_count(text: str) -> int:
    """Words and punctuation marks: a cheap stand-in for subword tokens (usually 10-30% fewer)."""
    return len(_REGEX_TOKEN.findall(text))


def token_counter(tokenizer: Any = None) -> TokenCounter:
    """A token counter: the regex count (None), a HF `transformers` or `tokenizers` tokenizer (counted
    without special tokens), or any callable str -> int."""
    if tokenizer is None:
        return regex_token_count
    if hasattr(tokenizer, "encode"):
        def count(text: str) -> int:
            encoded = tokenizer.encode(text, add_special_tokens=False)
            return len(encoded.ids) if hasattr(encoded, "ids") else len(encoded)

        return count
    if callable(tokenizer):
        return tokenizer
    raise TypeError(f"cannot count tokens with {type(tokenizer).__name__}: give a tokenizer or a callable")


@dataclass(frozen=True)
class Chunk:
    id: str
    doc: str
    heading: tuple[str, ...]
    text: str
    n_tokens: int
    start: int
    end: int

    @property
    def source(self) -> str:
        """How a citation names it: `03-leave-and-holidays.md > Leave and Holidays > Annual leave`."""
        return " > ".join((self.doc, *self.heading))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "doc": self.doc, "heading": list(self.heading), "text": self.text,
                "n_tokens": self.n_tokens, "start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Chunk:
        return cls(id=row["id"], doc=row["doc"], heading=tuple(row["heading"]), text=row["text"],
                   n_tokens=int(row["n_tokens"]), start=int(row["start"]), end=int(row["end"]))


def chunk_id(doc: str, heading: Sequence[str], text: str, occurrence: int = 0) -> str:
    key = "\x1f".join((doc, " > ".join(heading), text))
    if occurrence:  # the same text twice under one heading still needs two ids
        key += f"\x1f{occurrence}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------ splitting

@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    para_end: bool


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?\u2026]+[)\"'\]*_\u201d\u2019]*(?=\s)")
_LINE_ITEM = re.compile(r"\n(?=[ \t]*(?:[-*+]\s|\d+[.)]\s|\||>))")
_NOT_AN_END = re.compile(
    r"(?:^|\s|\()(?:\d+|[A-Za-z]|e\.g|i\.e|etc|vs|cf|approx|no|fig|mr|mrs|ms|dr|st|prof|inc|ltd)\.$",
    re.IGNORECASE,
)


def _spans(text: str, start: int, end: int, cuts: list[int]) -> list[tuple[int, int]]:
    """Whitespace-trimmed, non-empty spans of text[start:end] between the cut positions."""
    out = []
    bounds = [start, *sorted(c for c in cuts if start < c < end), end]
    for a, b in zip(bounds, bounds[1:], strict=False):
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def _paragraphs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    return _spans(text, start, end, [m.start() for m in _PARAGRAPH_BREAK.finditer(text, start, end)])


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = [m.start() for m in _LINE_ITEM.finditer(text, start, end)]
    for m in _SENTENCE_END.finditer(text, start, end):
        if not _NOT_AN_END.search(text[max(start, m.end() - 12) : m.end()]):
            cuts.append(m.end())
    return _spans(text, start, end, cuts)


def _units(text: str, start: int, end: int, max_tokens: int, count: TokenCounter) -> list[_Unit]:
    units: list[_Unit] = []
    for p_start, p_end in _paragraphs(text, start, end):
        pieces: list[_Unit] = []
        for s_start, s_end in _sentences(text, p_start, p_end):
            n = count(text[s_start:s_end])
            if n <= max_tokens:
                pieces.append(_Unit(s_start, s_end, n, False))
            else:
                pieces.extend(_word_groups(text, s_start, s_end, max_tokens, count))
        if pieces:
            last = pieces[-1]
            pieces[-1] = _Unit(last.start, last.end, last.tokens, True)
        units.extend(pieces)
    return units


def _word_groups(text: str, start: int, end: int, max_tokens: int, count: TokenCounter) -> list[_Unit]:
    """A sentence longer than the budget, cut between words into pieces within it."""
    groups: list[_Unit] = []
    g_start = g_end = None
    total = 0
    for m in re.finditer(r"\S+", text[start:end]):
        w_start, w_end = start + m.start(), start + m.end()
        n = count(text[w_start:w_end])
        if g_start is not None and total + n > max_tokens:
            groups.append(_Unit(g_start, g_end, count(text[g_start:g_end]), False))
            g_start, total = None, 0
        if g_start is None:
            g_start = w_start
        g_end, total = w_end, total + n
    if g_start is not None:
        groups.append(_Unit(g_start, g_end, count(text[g_start:g_end]), False))
    return groups


# ------------------------------------------------------------------------------------ packing


def _pack(units: list[_Unit], text: str, max_tokens: int, overlap: int, count: TokenCounter) -> list[tuple[int, int, int]]:
    """Greedy packing of units into (start, end, tokens) spans; see the module doc."""
    spans = []
    i, n = 0, len(units)
    while i < n:
        j, total = i, 0
        while j < n and total + units[j].tokens <= max_tokens:
            total += units[j].tokens
            j += 1
        j = max(j, i + 1)  # a single word over the budget still makes progress
        if j < n:
            filled = total
            for c in range(j, i, -1):
                if units[c - 1].para_end and filled >= max_tokens / 2:
                    j = c
                    break
                filled -= units[c - 1].tokens
        # Unit counts are summed as an estimate; a subword tokenizer may count the joined text a little
        # differently, so the real count decides.
        real = count(text[units[i].start : units[j - 1].end])
        while real > max_tokens and j - i > 1:
            j -= 1
            real = count(text[units[i].start : units[j - 1].end])
        spans.append((units[i].start, units[j - 1].end, real))
        if j >= n:
            break
        s, shared = j, 0
        while s - 1 > i and shared + units[s - 1].tokens <= overlap and (
            shared + units[s - 1].tokens + units[j].tokens <= max_tokens
        ):
            s -= 1
            shared += units[s].tokens
        i = s
    return spans


def chunk_document(doc: Document, max_tokens: int = 256, overlap: int = 32,
                   count_tokens: TokenCounter | None = None,
                   heading_tokens: Callable[[tuple[str, ...]], int] | None = None) -> list[Chunk]:
    """Chunks of one document. `heading_tokens(heading_path)`, when given, is taken off each section's
    budget: RAG embeds a chunk with its heading line, and the whole must fit the embedder's window."""
    if max_tokens <= 0:
        raise TunelabError(f"chunk size must be > 0 tokens, got {max_tokens}")
    if not 0 <= overlap < max_tokens:
        raise TunelabError(f"chunk overlap must be >= 0 and smaller than the chunk size ({max_tokens}), got {overlap}")
    count = count_tokens or regex_token_count
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for section in doc.sections:
        budget = max_tokens
        if heading_tokens is not None:
            # a very long heading path may not starve its section: at least a quarter of the budget is text
            budget = max(max_tokens - heading_tokens(section.heading), max(1, max_tokens // 4))
        whole = count(section.text)
        if whole <= budget:
            spans = [(section.start, section.end, whole)]
        else:
            units = _units(doc.text, section.start, section.end, budget, count)
            spans = _pack(units, doc.text, budget, min(overlap, budget - 1), count)
        for start, end, tokens in spans:
            text = doc.text[start:end]
            base = chunk_id(doc.path, section.heading, text)
            occurrence = seen.get(base, 0)
            seen[base] = occurrence + 1
            cid = chunk_id(doc.path, section.heading, text, occurrence) if occurrence else base
            chunks.append(Chunk(cid, doc.path, section.heading, text, tokens, start, end))
    return chunks


def chunk_documents(docs: Sequence[Document], max_tokens: int = 256, overlap: int = 32,
                    count_tokens: TokenCounter | None = None,
                    heading_tokens: Callable[[tuple[str, ...]], int] | None = None) -> list[Chunk]:
    """Chunks of every document, in document order then text order."""
    out: list[Chunk] = []
    for doc in docs:
        out.extend(chunk_document(doc, max_tokens, overlap, count_tokens, heading_tokens))
    return out
