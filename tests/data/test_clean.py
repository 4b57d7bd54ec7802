"""Cleaning: normalisation, control characters, whitespace, HTML, and record-level drops."""

from __future__ import annotations

import pytest

from tunelab.data.clean import CleanOptions, clean_records, clean_text, strip_html
from tunelab.data.records import Record
from tunelab.errors import TunelabError

NFC = CleanOptions()
NFKC = CleanOptions(normalize="NFKC")
RAW = CleanOptions(normalize="none")
HTML = CleanOptions(strip_html=True)


def test_control_characters_are_dropped_but_newlines_and_tabs_survive() -> None:
    assert clean_text("a\x00b\x07c\x1bd\x7fe\u200bf\ufeffg", NFC) == "abcdefg"
    assert clean_text("line one\nline two", NFC) == "line one\nline two"
    assert clean_text("\tindented\n\tcode", NFC) == "indented\n\tcode"  # leading tab of line 2 kept


def test_line_breaks_are_unified() -> None:
    assert clean_text("a\r\nb\rc\u2028d\x0ce", NFC) == "a\nb\nc\nd\ne"


def test_whitespace_is_normalised() -> None:
    text = "  Hello   world\t\tagain  \n\n\n\n  next  line \u00a0here   \n"
    assert clean_text(text, NFC) == "Hello world again\n\n  next line here"


def test_indentation_and_fenced_code_are_preserved() -> None:
    text = "Run this:\n```\ndef f():\n    return  {'a':   1}   \n```\nDone   now."
    assert clean_text(text, NFC) == "Run this:\n```\ndef f():\n    return  {'a':   1}\n```\nDone now."


def test_nfc_composes_and_nfkc_also_folds_compatibility_forms() -> None:
    decomposed = (
        "Cafe\u0301 \ufb01le \uff21\u00b2"  # e + combining acute, fi ligature, fullwidth A, superscript 2
    )
    assert clean_text(decomposed, NFC) == "Caf\u00e9 \ufb01le \uff21\u00b2"
    assert clean_text(decomposed, NFKC) == "Caf\u00e9 file A2"
    assert clean_text(decomposed, RAW) == decomposed


def test_html_is_stripped_only_when_asked() -> None:
    page = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body>"
        "<h1>Title</h1><p>Fish &amp; chips&nbsp;&lt;3</p><!-- note --><ul><li>one</li><li>two</li></ul>"
        "<script>alert(1)</script>x<br>y</body></html>"
    )
    assert clean_text(page, HTML) == "Title\n\nFish & chips <3\n\none\n\ntwo\n\nx\ny"
    assert clean_text("<b>bold</b> &amp;", NFC) == "<b>bold</b> &amp;"


def test_html_stripping_keeps_angle_brackets_that_are_not_tags() -> None:
    assert strip_html("use List<String> when 3 < 4") == "use List<String> when 3 < 4"
    assert strip_html("Tom &amp; Jerry") == "Tom & Jerry"


def test_bad_options_raise() -> None:
    with pytest.raises(TunelabError, match="normalize"):
        CleanOptions(normalize="NFD")
    with pytest.raises(TunelabError, match="max_chars"):
        CleanOptions(min_chars=10, max_chars=5)


def _chat(user: str, assistant: str, line: int = 1) -> Record:
    return Record(
        kind="chat",
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        meta={"file": "in.jsonl", "line": line},
    )


def test_clean_records_counts_drops_by_reason() -> None:
    records = [
        _chat("Hello  there", "General\x00 Kenobi", 1),
        _chat("   ", "answer", 2),  # empty user turn after cleaning
        _chat("a", "b", 3),  # 2 chars in total
        _chat("x" * 50, "y" * 60, 4),  # 110 chars
        Record(kind="label", text="<p>good</p>", label="Pos"),
    ]
    kept, dropped = clean_records(records, CleanOptions(min_chars=3, max_chars=100, strip_html=True))
    assert dropped == {"empty_after_cleaning": 1, "too_short": 1, "too_long": 1}
    assert [r.messages[0]["content"] if r.messages else r.text for r in kept] == ["Hello there", "good"]
    assert kept[0].messages[1]["content"] == "General Kenobi"
    assert kept[0].meta == {"file": "in.jsonl", "line": 1}
    assert kept[1].label == "Pos"
    assert records[0].messages[0]["content"] == "Hello  there"  # input untouched


def test_clean_records_min_chars_boundary() -> None:
    kept, dropped = clean_records([Record(kind="text", text="abc")], CleanOptions(min_chars=3, max_chars=3))
    assert len(kept) == 1 and sum(dropped.values()) == 0
