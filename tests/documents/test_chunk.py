"""Chunking: heading-first, token budget with sentence overlap, stable content-hash ids, exact offsets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunelab.documents.chunk import chunk_document, chunk_documents, regex_token_count, token_counter
from tunelab.documents.ingest import Document, ingest
from tunelab.errors import TunelabError


def sentence(i: int, words: int = 9) -> str:
    return " ".join([f"Topic{i}"] + [f"word{i}x{j}" for j in range(words - 1)]) + "."


def paragraph(start: int, n: int) -> str:
    return " ".join(sentence(i) for i in range(start, start + n))


def doc_from(tmp_path: Path, text: str, name: str = "doc.md") -> Document:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return next(d for d in ingest(tmp_path).documents if d.path == name)


LONG = "# Guide\n\n" + paragraph(0, 6) + "\n\n" + paragraph(6, 6) + "\n\n## Short\n\nOnly this.\n\n" + \
       "## Long\n\n" + "\n\n".join(paragraph(20 + 5 * k, 5) for k in range(5)) + "\n"


def words_in(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def check_invariants(doc: Document, chunks, max_tokens: int, count=regex_token_count) -> None:
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.n_tokens == count(c.text) <= max_tokens
        # never inside a word: the span starts and ends at whitespace (or the text's edges)
        assert c.start == 0 or doc.text[c.start - 1].isspace() or doc.text[c.start - 1] in "#"
        assert c.end == len(doc.text) or doc.text[c.end].isspace()
    # every word of every section is in some chunk of that section: nothing is lost
    for s in doc.sections:
        mine = [c for c in chunks if c.heading == s.heading]
        covered = set()
        for c in mine:
            covered.update(range(c.start, c.end))
        for m in re.finditer(r"\S+", s.text):
            assert s.start + m.start() in covered, m.group()


def test_headings_first_then_budget(tmp_path: Path):
    doc = doc_from(tmp_path, LONG)
    chunks = chunk_document(doc, max_tokens=60, overlap=12)
    check_invariants(doc, chunks, 60)
    assert {c.heading for c in chunks} == {("Guide",), ("Guide", "Short"), ("Guide", "Long")}
    short = [c for c in chunks if c.heading == ("Guide", "Short")]
    assert [c.text for c in short] == ["Only this."]
    assert all(c.source.startswith("doc.md > Guide") for c in chunks)


def test_overlap_is_whole_sentences_within_the_limit(tmp_path: Path):
    doc = doc_from(tmp_path, LONG)
    for overlap in (0, 12, 25):
        chunks = [c for c in chunk_document(doc, 60, overlap) if c.heading == ("Guide", "Long")]
        assert len(chunks) > 3
        for a, b in zip(chunks, chunks[1:], strict=False):
            shared = doc.text[b.start : a.end] if b.start < a.end else ""
            assert regex_token_count(shared) <= overlap
            if overlap >= 11:  # one sentence is 11 regex tokens: it must be shared
                assert shared and shared.endswith(".") and re.fullmatch(r"(Topic\d+[^.]*\.\s*)+", shared)
            if overlap == 0:
                assert b.start > a.end


def test_a_cut_prefers_a_paragraph_end(tmp_path: Path):
    # Two 66-token paragraphs, budget 100: the first chunk could take 9 sentences, but it ends with the
    # first paragraph, which fills it more than half.
    doc = doc_from(tmp_path, "# T\n\n" + paragraph(0, 6) + "\n\n" + paragraph(6, 6) + "\n")
    first = chunk_document(doc, 100, 0)[0]
    assert first.text == paragraph(0, 6)


def test_a_sentence_over_budget_is_cut_between_words(tmp_path: Path):
    long_sentence = " ".join(f"w{i}" for i in range(100)) + "."
    doc = doc_from(tmp_path, "# T\n\n" + long_sentence + "\n")
    chunks = chunk_document(doc, 30, 0)
    check_invariants(doc, chunks, 30)
    assert " ".join(c.text for c in chunks) == long_sentence
    # a single word longer than the whole budget is its own chunk (the only over-budget case)
    doc = doc_from(tmp_path, "# T\n\nshort words " + "x" * 50 + " end\n", "word.md")
    chunks = chunk_document(doc, 5, 0, count_tokens=len)
    assert [c.text for c in chunks] == ["short", "words", "x" * 50, "end"]
    assert chunks[2].n_tokens == 50


def test_ids_are_stable_and_content_sensitive(tmp_path: Path):
    doc = doc_from(tmp_path, LONG)
    first = chunk_document(doc, 60, 12)
    again = chunk_document(doc_from(tmp_path, LONG), 60, 12)
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    assert all(re.fullmatch(r"[0-9a-f]{16}", c.id) for c in first)

    edited = doc_from(tmp_path, LONG.replace("Only this.", "Only that."))
    changed = chunk_document(edited, 60, 12)
    old, new = {c.id for c in first}, {c.id for c in changed}
    assert len(old - new) == 1 and len(new - old) == 1  # only the edited section's chunk

    renamed = chunk_document(doc_from(tmp_path, LONG, "other.md"), 60, 12)
    assert not old & {c.id for c in renamed}

    twice = doc_from(tmp_path, "# A\n\nSame.\n\n# A\n\nSame.\n", "twice.md")
    ids = [c.id for c in chunk_document(twice)]
    assert len(ids) == 2 and ids[0] != ids[1]


def test_hf_tokenizer_budget(tmp_path: Path, tiny_tokenizer):
    doc = doc_from(tmp_path, LONG)
    count = token_counter(tiny_tokenizer)
    assert count("hello world") == len(tiny_tokenizer.encode("hello world", add_special_tokens=False))
    chunks = chunk_document(doc, 80, 20, count_tokens=count)
    check_invariants(doc, chunks, 80, count)
    assert max(c.n_tokens for c in chunks) > 40  # the budget is used, not wasted


def test_heading_tokens_come_off_the_budget(tmp_path: Path):
    doc = doc_from(tmp_path, LONG)
    plain = chunk_document(doc, 60, 0)
    reserved = chunk_document(doc, 60, 0, heading_tokens=lambda h: 20)
    assert max(c.n_tokens for c in reserved) <= 40 < max(c.n_tokens for c in plain)


def test_sentences_do_not_end_at_abbreviations(tmp_path: Path):
    text = "# T\n\n" + " ".join(["Bring documents, e.g. a passport and a visa, to the desk on day one."] * 4) + "\n"
    doc = doc_from(tmp_path, text)
    for c in chunk_document(doc, 20, 0):
        assert not c.text.endswith("e.g.")


def test_bad_parameters(tmp_path: Path):
    doc = doc_from(tmp_path, LONG)
    with pytest.raises(TunelabError, match="smaller than the chunk size"):
        chunk_documents([doc], 50, 50)
    with pytest.raises(TunelabError, match="must be > 0"):
        chunk_documents([doc], 0, 0)
    with pytest.raises(TypeError):
        token_counter(42)
