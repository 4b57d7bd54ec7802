"""Tests for tunelab.data.readers: every container format, row positions, and row-level read problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.readers import RawRow, iter_rows
from tunelab.errors import TunelabError

FILES = Path(__file__).parent / "files"


def rows_of(path: Path, **kw) -> list[RawRow]:
    return list(iter_rows(path, **kw))


def positions(rows: list[RawRow]) -> list[tuple[int | None, str | None]]:
    """(line, problem reason or None) per row."""
    return [(r.line, r.problem.reason if r.problem else None) for r in rows]


# -- JSONL ---------------------------------------------------------------------------------------------
def test_jsonl_rows_line_numbers_skip_blank_lines():
    rows = rows_of(FILES / "chat.jsonl")
    assert positions(rows) == [(1, None), (3, None)]
    assert rows[0].file == str(FILES / "chat.jsonl")
    assert rows[0].row["source"] == "geo.md"
    assert rows[1].row["messages"][-1] == {"role": "assistant", "content": "Call extension 4455."}
    assert all(r.unit == "line" for r in rows)


def test_ndjson_crlf_and_bom(tmp_path):
    path = tmp_path / "d.ndjson"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}\r\n{"text": "c"}')
    rows = rows_of(path)
    assert [(r.line, r.row) for r in rows] == [(1, {"text": "a"}), (3, {"text": "b"}), (4, {"text": "c"})]


def test_jsonl_invalid_json_and_not_object_do_not_stop_the_file():
    rows = rows_of(FILES / "bad" / "invalid_json.jsonl")
    assert positions(rows) == [(1, None), (2, "invalid_json"), (3, "invalid_json")]
    assert rows[1].problem.message == "invalid JSON: Unterminated string starting at column 10"
    assert rows[1].problem.line == 2 and rows[1].problem.field is None
    rows = rows_of(FILES / "bad" / "not_object.jsonl")
    assert positions(rows) == [(1, None), (2, "not_object"), (3, "not_object")]
    assert rows[2].problem.message == "expected a JSON object, got string"


def test_jsonl_non_utf8_names_line_and_byte_offset():
    rows = rows_of(FILES / "bad" / "non_utf8.jsonl")
    assert positions(rows) == [(1, None), (2, "non_utf8"), (3, None)]
    # Line 2 is b'{"text": "caf\xe9 latin-1"}'; line 1 is 17 bytes long.
    assert rows[1].problem.message == (
        "not valid UTF-8: byte 0xe9 at byte offset 13 of the line (offset 30 in the file); "
        "re-save the file as UTF-8"
    )
    assert rows[2].row == {"text": "also fine"}


def test_jsonl_line_over_limit_is_not_parsed_and_reading_goes_on():
    rows = rows_of(FILES / "bad" / "long_line.jsonl", max_line_bytes=200)
    assert positions(rows) == [(1, None), (2, "line_too_long"), (3, None)]
    assert rows[1].problem.message.startswith("line is 313 bytes, over the 200-byte limit; it was not parsed")
    assert rows[2].row == {"text": "short again"}


def test_jsonl_line_limit_boundary(tmp_path):
    line = json.dumps({"text": "x" * 20})  # 32 bytes without the newline
    path = tmp_path / "d.jsonl"
    path.write_text(f"{line}\n{line}x\n{line}")
    rows = rows_of(path, max_line_bytes=len(line))
    assert positions(rows) == [(1, None), (2, "line_too_long"), (3, None)]


def test_whitespace_only_jsonl_is_empty(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n   \n\n")
    with pytest.raises(TunelabError, match=r"blank\.jsonl is empty"):
        rows_of(path)


# -- JSON ----------------------------------------------------------------------------------------------
def test_json_array_reports_element_start_lines():
    rows = rows_of(FILES / "array.json")
    assert [(r.line, r.row["instruction"]) for r in rows] == [(2, "Say hi"), (6, "Say bye")]


def test_json_object_with_one_list_field():
    rows = rows_of(FILES / "wrapped.json")
    assert [(r.line, r.row) for r in rows] == [
        (4, {"text": "first", "label": "a"}),
        (8, {"text": "second", "label": "b"}),
    ]


def test_json_single_record_object(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(
        '\n{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    rows = rows_of(path)
    assert len(rows) == 1 and rows[0].line == 2 and len(rows[0].row["messages"]) == 2


def test_json_compact_array_lines_and_not_object(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"text": "a"}, 3,\n {"text": "b"}]')
    assert positions(rows_of(path)) == [(1, None), (1, "not_object"), (2, None)]


def test_json_syntax_error_keeps_earlier_rows(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n  {"text": "c"}\n]\n')
    rows = rows_of(path)
    assert positions(rows) == [(2, None), (3, None), (4, "invalid_json")]
    assert rows[2].problem.message == (
        "invalid JSON: Expecting ',' delimiter at column 3; rows after this point were not read"
    )


def test_json_trailing_garbage_is_invalid(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('[{"text": "a"}]\nxyz\n')
    assert positions(rows_of(path)) == [(1, None), (2, "invalid_json")]


def test_json_non_utf8(tmp_path):
    path = tmp_path / "n.json"
    path.write_bytes(b'[\n{"text": "ok"},\n{"text": "\xff"}\n]')
    rows = rows_of(path)
    assert positions(rows) == [(3, "non_utf8")]
    assert "byte 0xff at byte offset 10 of the line (offset 28 in the file)" in rows[0].problem.message


def test_json_lines_saved_as_json(tmp_path):
    import datasets

    path = tmp_path / "exported.json"
    datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}]).to_json(str(path))  # JSON Lines by default
    assert [(r.line, r.row) for r in rows_of(path)] == [(1, {"text": "a"}), (2, {"text": "b"})]
    path.write_text('{"text": "a"}\n{"text": \n')
    assert positions(rows_of(path)) == [(1, None), (2, "invalid_json")]
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n{"text": "c"}\n')
    assert positions(rows_of(path)) == [(1, None), (2, "non_utf8"), (3, None)]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[]", "is empty"),
        ("  \n", "is empty"),
        ('"text"', "expected a JSON array of objects"),
        ('{"train": [], "test": []}', "found lists under: train, test"),
    ],
)
def test_json_whole_file_errors(tmp_path, content, match):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(TunelabError, match=match):
        rows_of(path)


# -- CSV / TSV -----------------------------------------------------------------------------------------
def test_csv_lines_multiline_records_and_missing_cells():
    rows = rows_of(FILES / "table.csv")
    assert [r.line for r in rows] == [2, 3, 6]
    assert rows[0].row == {"instruction": "Say hi", "output": "Hi!", "category": "greeting"}
    assert rows[1].row["output"] == "Rain falls.\nRain stops."
    assert rows[1].row["input"] == 'about "rain"'
    assert rows[2].row == {"instruction": "Count to three", "output": "1, 2, 3"}


def test_tsv_values_are_strings(tmp_path):
    rows = rows_of(FILES / "table.tsv")
    assert [r.row for r in rows] == [
        {"text": "Great service", "label": "positive"},
        {"text": "Slow reply", "label": "negative"},
    ]
    path = tmp_path / "n.tsv"
    path.write_text("text\tlabel\nx\t1\n")
    assert rows_of(path)[0].row == {"text": "x", "label": "1"}


def test_csv_bad_rows_become_problems(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b'text,label\nok,a\ncaf\xe9,b\n"one","two","three"\n' + b"y" * 50 + b",c\nlast,d\n")
    rows = rows_of(path, max_line_bytes=40)
    assert positions(rows) == [
        (2, None),
        (3, "non_utf8"),
        (4, "invalid_csv"),
        (5, "line_too_long"),
        (6, None),
    ]
    assert rows[2].problem.message == (
        "record has 3 values but the header has 2 columns (an unquoted delimiter inside a value?)"
    )
    assert rows[4].row == {"text": "last", "label": "d"}


def test_csv_rows_with_too_few_or_too_many_values_are_problems_at_their_line():
    path = FILES / "csv" / "wrong_counts.csv"
    rows = rows_of(path)
    assert positions(rows) == [(2, "invalid_csv"), (3, None), (4, "invalid_csv")]
    assert rows[0].problem.message == "record has 1 value but the header has 2 columns (a missing delimiter?)"
    assert str(rows[0].problem).startswith(f"{path}:2: ")
    assert rows[2].problem.message == (
        "record has 4 values but the header has 2 columns (an unquoted delimiter inside a value?)"
    )


def test_csv_quote_closing_mid_value_or_lines_later_is_a_problem(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('a,b\n"x"y,z\n"one,two\nthree,"four\nok,fine\n"p\nq",2,3\n')
    rows = rows_of(path)
    assert positions(rows) == [(2, "invalid_csv"), (3, "invalid_csv"), (5, None), (6, "invalid_csv")]
    assert rows[0].problem.message == "malformed CSV record: ',' expected after '\"'"
    assert rows[1].problem.message.endswith("(lines 3-4 read as one record: a quote that closes too late?)")
    assert rows[3].problem.message == (
        "record has 3 values but the header has 2 columns (lines 6-7 read as one record: a quote that closes "
        "too late?)"
    )


def test_csv_quote_that_never_closes_stops_the_file_at_its_line():
    path = FILES / "csv" / "unclosed_quote.csv"
    with pytest.raises(TunelabError) as info:
        rows_of(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: a quoted CSV value opens on this line and never closes")
    assert "runs on to the end of the file (line 5)" in msg


def test_csv_quote_open_past_the_field_limit_stops_the_file(tmp_path):
    import csv

    path = tmp_path / "big.csv"
    # The reader only ever raises the csv module's limit to max_line_bytes, so today's limit holds.
    lines = csv.field_size_limit() // 36 + 10
    path.write_text("text,label\nok,a\n" + '"runaway,b\n' + "".join(f"row {i:>30},b\n" for i in range(lines)))
    with pytest.raises(TunelabError) as info:
        rows_of(path, max_line_bytes=100)
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: a quoted CSV value opens on this line and never closes: it is still open")
    assert f"past the {csv.field_size_limit()}-character limit on one value" in msg


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("text,label\n", "is empty"),
        ('"text,label\nx,y\n', "header row cannot be read: unexpected end of data"),
        ("text,,label\nx,y,z\n", "header column.s. 2 have no name"),
        ("text,text\nx,y\n", "duplicate header column.s.: text"),
    ],
)
def test_csv_whole_file_errors(tmp_path, content, match):
    path = tmp_path / "x.csv"
    path.write_text(content)
    with pytest.raises(TunelabError, match=match):
        rows_of(path)


# -- Parquet and saved datasets ------------------------------------------------------------------------
def test_parquet_rows_numbered_across_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500  # more than one 1024-row batch
    table = pa.table(
        {"text": [f"t{i}" for i in range(n)], "label": [i % 3 if i != 7 else None for i in range(n)]}
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, row_group_size=1000)
    rows = rows_of(path)
    assert len(rows) == n
    assert [r.line for r in rows] == list(range(1, n + 1))
    assert rows[2499].row == {"text": "t2499", "label": 2499 % 3}
    assert rows[7].row == {"text": "t7", "label": None}
    assert rows[0].unit == "row"


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet")
    with pytest.raises(TunelabError, match=r"fake\.parquet is not a readable Parquet file"):
        rows_of(path)


def test_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    ds.save_to_disk(str(tmp_path / "single"))
    rows = rows_of(tmp_path / "single")
    assert [(r.line, r.row, r.unit) for r in rows] == [
        (1, {"text": "a", "label": "x"}, "row"),
        (2, {"text": "b", "label": "y"}, "row"),
    ]
    with pytest.raises(TunelabError, match="single dataset without splits"):
        rows_of(tmp_path / "single", split="test")

    dd = datasets.DatasetDict(
        {"train": ds, "test": datasets.Dataset.from_list([{"text": "c", "label": "z"}])}
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert [r.row["text"] for r in rows_of(tmp_path / "dict")] == ["a", "b"]
    assert [r.row["text"] for r in rows_of(tmp_path / "dict", split="test")] == ["c"]
    with pytest.raises(TunelabError, match=r"has no split 'validation'; splits: train, test"):
        rows_of(tmp_path / "dict", split="validation")


# -- whole-path errors -----------------------------------------------------------------------------------
def test_path_errors_name_the_path(tmp_path):
    with pytest.raises(TunelabError, match=r"nope\.jsonl: no such file or directory"):
        iter_rows(tmp_path / "nope.jsonl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TunelabError, match=r"notes\.txt: unsupported file type '\.txt'"):
        iter_rows(tmp_path / "notes.txt")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TunelabError, match=r"empty\.csv is empty"):
        iter_rows(tmp_path / "empty.csv")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TunelabError, match="is a directory but not a saved Hugging Face dataset"):
        iter_rows(tmp_path / "plain")
