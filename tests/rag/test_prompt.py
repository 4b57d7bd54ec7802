"""The RAG prompt: chunks in rank order within a token budget of the generating model's tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tunelab.documents.chunk import token_counter
from tunelab.errors import TunelabError
from tunelab.rag.prompt import (
    DEFAULT_TEMPLATE,
    NO_CONTEXT,
    RAG_PROMPT_SHA256,
    RAG_PROMPT_VERSION,
    build_rag_prompt,
    load_template,
    rag_messages,
)
from tunelab.rag.retriever import Hit


def hit(rank: int, text: str, doc: str = "03-leave-and-holidays.md", heading=("Leave", "Annual leave")) -> Hit:
    return Hit(f"id{rank}", doc, tuple(heading), text, 1.0 - rank / 10, rank)


def context_of(content: str) -> str:
    return content.split("Context:\n", 1)[1].split("\n\nQuestion:", 1)[0]


HITS = [
    hit(1, "Full-time employees get 27 days of paid annual leave per year."),
    hit(2, "Leave the building by the main exit. " * 30, "08-facilities.md", ("Facilities", "Fire")),
    hit(3, "Carry over up to 5 unused days.", heading=("Leave", "Carry over")),
]


def test_context_fits_the_budget_and_keeps_whole_chunks(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "First question"},
                {"role": "assistant", "content": "First answer"},
                {"role": "user", "content": "How many days of leave?"}]
    count = token_counter(tiny_tokenizer)
    budget = count(f"[1] {HITS[0].source}\n{HITS[0].text}\n\n[2] {HITS[2].source}\n{HITS[2].text}") + 5
    prompt = build_rag_prompt(messages, HITS, tiny_tokenizer, budget)

    assert [h.rank for h in prompt.used] == [1, 3] and [h.rank for h in prompt.dropped] == [2]
    content = prompt.messages[-1]["content"]
    context = context_of(content)
    assert count(context) == prompt.context_tokens <= budget
    # rank order, renumbered, sources shown, whole texts (the long chunk is left out, not cut)
    assert context == (f"[1] 03-leave-and-holidays.md > Leave > Annual leave\n{HITS[0].text}\n\n"
                       f"[2] 03-leave-and-holidays.md > Leave > Carry over\n{HITS[2].text}")
    assert "main exit" not in content
    assert content.endswith("Question: How many days of leave?")
    assert content.startswith("Answer the question using the context below.")
    # earlier turns untouched, the input not modified
    assert prompt.messages[:3] == messages[:3] and messages[-1]["content"] == "How many days of leave?"
    assert prompt.summary()["prompt_version"] == RAG_PROMPT_VERSION


def test_budget_too_small_for_any_chunk(tiny_tokenizer):
    msgs = rag_messages([{"role": "user", "content": "q"}], HITS, tiny_tokenizer, budget_tokens=3)
    assert context_of(msgs[-1]["content"]) == NO_CONTEXT


def test_everything_fits_with_a_large_budget(tiny_tokenizer):
    prompt = build_rag_prompt([{"role": "user", "content": "q"}], list(reversed(HITS)), tiny_tokenizer, 10_000)
    assert [h.rank for h in prompt.used] == [1, 2, 3]  # ranked order, whatever order the hits came in


def test_custom_template_and_literal_braces(tmp_path: Path, tiny_tokenizer):
    tpl = tmp_path / "mine.txt"
    tpl.write_text("Docs {x}:\n{context}\n---\nQ: {question}\n", encoding="utf-8")
    braces = [hit(1, "Use {question} and {context} literally in templates.")]
    out = build_rag_prompt([{"role": "user", "content": "Why {context}?"}], braces, tiny_tokenizer, 500, tpl)
    assert out.messages[0]["content"] == (
        "Docs {x}:\n[1] 03-leave-and-holidays.md > Leave > Annual leave\n"
        "Use {question} and {context} literally in templates.\n---\nQ: Why {context}?")
    assert out.template_version.startswith("custom-")

    bad = tmp_path / "bad.txt"
    bad.write_text("only {context}", encoding="utf-8")
    with pytest.raises(TunelabError, match=r"lacks the placeholder\(s\) \{question\}"):
        load_template(bad)
    with pytest.raises(TunelabError, match="cannot be read"):
        load_template(tmp_path / "missing.txt")


def test_errors(tiny_tokenizer):
    with pytest.raises(TunelabError, match="no user turn|has none"):
        rag_messages([{"role": "system", "content": "x"}], HITS, tiny_tokenizer, 100)
    with pytest.raises(TunelabError, match="budget must be > 0"):
        rag_messages([{"role": "user", "content": "x"}], HITS, tiny_tokenizer, 0)


def test_template_text_matches_its_version():
    # Editing prompt.txt changes results: bump RAG_PROMPT_VERSION and RAG_PROMPT_SHA256 together.
    assert hashlib.sha256(DEFAULT_TEMPLATE.read_bytes()).hexdigest() == RAG_PROMPT_SHA256
    assert load_template().version == RAG_PROMPT_VERSION
