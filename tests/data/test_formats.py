"""Tests for tunelab.data.formats: detection, validation, conversion to Records, and read_records."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunelab.data.formats import FORMATS, REASONS, detect_format, read_records, to_record
from tunelab.errors import InputError, TunelabError

FILES = Path(__file__).parent / "files"
BAD = FILES / "bad"


def convo(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


# -- detection -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ({"prompt": "p", "completion": "c", "chosen": "c", "rejected": "r"}, "preference"),
        ({"messages": [], "text": "t"}, "chat"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "i", "output": "o", "text": "t"}, "alpaca"),
        ({"instruction": "i"}, "alpaca"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"text": "t", "label": 1}, "label"),
        ({"text": "t"}, "text"),
        ({"text": "t", "label": None}, "text"),
        ({"prompt": "p"}, None),
        ({"question": "q", "answer": "a"}, "qna"),
        ({"question": "q", "answer": "a", "context": "c"}, "qna"),
        ({"question": "q", "context": "c"}, None),
    ],
)
def test_detect_format_precedence(row, fmt):
    assert detect_format(row) == fmt


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ({"messages": []}, "chat"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"text": "t", "label": 1}, "label"),
        ({"text": "t"}, "text"),
    ],
)
def test_question_and_answer_fields_do_not_change_older_formats(row, fmt):
    # A row of an older format that also carries question/answer/context is still that format.
    assert detect_format({**row, "question": "q", "answer": "a", "context": "c"}) == fmt


# -- one good file per format --------------------------------------------------------------------------
def test_alpaca_file():
    res = read_records([FILES / "alpaca.jsonl"])
    f = str(FILES / "alpaca.jsonl")
    assert res.formats == {f: "alpaca"} and res.rows_in == 2 and res.skipped == {} and res.problems == []
    a, b = res.records
    assert a.kind == "chat" and a.messages == convo(
        ("user", "Summarise the leave policy."), ("assistant", "Employees get 25 days of paid leave.")
    )
    assert a.meta == {"category": "hr", "file": f, "line": 1, "format": "alpaca"}
    assert b.messages == convo(
        ("system", "You are a translator."),
        ("user", "Translate to French.\n\nGood morning"),
        ("assistant", "Bonjour"),
    )
    assert b.meta["id"] == "a2"


def test_chat_file():
    res = read_records([FILES / "chat.jsonl"])
    assert [r.meta["line"] for r in res.records] == [1, 3]
    assert res.records[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert res.records[0].meta["source"] == "geo.md"
    assert len(res.records[1].messages) == 4


def test_sharegpt_file():
    a, b = read_records([FILES / "sharegpt.jsonl"]).records
    assert a.messages == convo(("user", "What is 2+2?"), ("assistant", "4")) and a.meta["id"] == "s1"
    assert b.messages == convo(
        ("system", "You are terse."), ("user", "Name a colour."), ("assistant", "Blue.")
    )


def test_prompt_completion_file():
    a, b = read_records([FILES / "prompt_completion.jsonl"]).records
    assert a.kind == "chat" and a.messages == convo(
        ("user", "The capital of France is"), ("assistant", " Paris.")
    )
    assert b.messages == convo(("user", "Expense deadline?"), ("assistant", "30 days after purchase."))


def test_text_and_label_files():
    text = read_records([FILES / "text.jsonl"]).records
    assert [(r.kind, r.text) for r in text] == [
        ("text", "Employees get 25 days of paid leave per year."),
        ("text", "Expense reports are due within 30 days of purchase."),
    ]
    assert text[0].meta["source"] == "handbook.md"
    labels = read_records([FILES / "label.jsonl"]).records
    assert [(r.kind, r.text, r.label) for r in labels] == [
        ("label", "I love this product", "positive"),
        ("label", "Terrible support", "0"),
    ]


def test_preference_file_string_explicit_and_implicit_prompts():
    a, b, c = read_records([FILES / "preference.jsonl"]).records
    assert (a.kind, a.messages, a.chosen, a.rejected) == (
        "preference",
        convo(("user", "Say hello politely.")),
        "Hello, how can I help?",
        "What.",
    )
    assert b.messages == convo(("system", "Be kind."), ("user", "Thanks!"))
    assert (b.chosen, b.rejected) == ("You're welcome!", "Whatever.")
    assert (c.messages, c.chosen, c.rejected) == (convo(("user", "2+2?")), "4", "5")


def test_qna_jsonl_context_comes_before_the_question():
    res = read_records([FILES / "qna.jsonl"])
    f = str(FILES / "qna.jsonl")
    assert res.formats == {f: "qna"} and res.skipped == {}
    a, b = res.records
    assert a.kind == "chat" and a.messages == convo(
        ("user", "Every employee gets 25 days of annual leave a year.\n\nHow many days of annual leave do I get?"),
        ("assistant", "25 days a year."),
    )
    assert a.meta == {"id": "hr-1", "file": f, "line": 1, "format": "qna"}
    assert b.messages == convo(("user", "Who approves expenses?"), ("assistant", "Your team lead."))


def test_qna_csv_with_an_empty_context_cell():
    a, b = read_records([FILES / "qna.csv"]).records
    assert a.messages == convo(
        ("user", "Refunds are paid within 14 days, to the card used.\n\nWhen are refunds paid?"),
        ("assistant", "Within 14 days."),
    )
    assert b.messages == convo(("user", "Can I pay by invoice?"), ("assistant", "Yes, for orders over 500 EUR."))
    assert a.meta["source"] == "faq" and b.meta["line"] == 3


def test_qna_problems_name_line_and_field(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "Q1?", "answer": "A1"}\n{"question": "Q2?"}\n{"question": "Q3?", "answer": 3}\n'
    )
    with pytest.raises(InputError) as info:
        read_records([path])
    assert [(p.line, p.field, p.reason) for p in info.value.problems] == [
        (2, "answer", "missing_field"),
        (3, "answer", "wrong_type"),
    ]


def test_json_csv_tsv_containers():
    res = read_records(
        [FILES / "array.json", FILES / "wrapped.json", FILES / "table.csv", FILES / "table.tsv"]
    )
    assert list(res.formats.values()) == ["alpaca", "label", "alpaca", "label"]
    assert res.rows_in == 9 and len(res.records) == 9
    by_file = [(Path(r.meta["file"]).name, r.meta["line"]) for r in res.records]
    assert by_file[:4] == [("array.json", 2), ("array.json", 6), ("wrapped.json", 4), ("wrapped.json", 8)]
    assert by_file[4:7] == [("table.csv", 2), ("table.csv", 3), ("table.csv", 6)]
    csv_rec = res.records[5]
    assert (
        csv_rec.messages[0]["content"] == 'Write two lines\n\nabout "rain"'
        and csv_rec.meta["category"] == "poem"
    )


def test_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["good", "bad", None], "label": [1, 0, 1]}), tmp_path / "d.parquet")
    with pytest.raises(InputError) as exc:
        read_records([tmp_path / "d.parquet"])
    (problem,) = exc.value.problems
    assert (problem.line, problem.field, problem.reason) == (3, "text", "missing_field")
    assert problem.message == "row 3: is null"
    res = read_records([tmp_path / "d.parquet"], skip_invalid=True)
    assert [(r.text, r.label, r.meta["line"]) for r in res.records] == [("good", "1", 1), ("bad", "0", 2)]

    ds = datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r", "source": "s"}])
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    (rec,) = read_records([tmp_path / "hf"]).records
    assert (rec.kind, rec.chosen, rec.meta["source"], rec.meta["line"]) == ("preference", "c", "s", 1)


# -- the bad-input corpus: exact (line, field, reason, message) for each file ----------------------------
BAD_CASES = {
    "invalid_json.jsonl": [
        (2, None, "invalid_json", "invalid JSON: Unterminated string starting at column 10"),
        (
            3,
            None,
            "invalid_json",
            "invalid JSON: Expecting property name enclosed in double quotes at column 27",
        ),
    ],
    "not_object.jsonl": [
        (2, None, "not_object", "expected a JSON object, got array"),
        (3, None, "not_object", "expected a JSON object, got string"),
    ],
    "missing_field.jsonl": [
        (2, "output", "missing_field", "missing required field"),
        (3, "output", "missing_field", "is null"),
    ],
    "empty_field.jsonl": [
        (2, "messages[1].content", "empty_field", "is empty"),
        (3, "messages", "empty_field", "has no messages"),
    ],
    "wrong_type.jsonl": [
        (2, "prompt", "wrong_type", "expected a string or an array of messages, got integer"),
        (3, "completion", "wrong_type", "expected a string or an array of messages, got object"),
    ],
    "unknown_role.jsonl": [
        (
            2,
            "conversations[1].from",
            "unknown_role",
            "unknown role 'bot'; expected one of: human, user, gpt, assistant, model, system, tool",
        ),
    ],
    "no_final_assistant.jsonl": [
        (
            2,
            "messages[2]",
            "bad_conversation",
            "the conversation ends with a user turn; the last turn must be the assistant's",
        ),
        (
            3,
            "messages",
            "bad_conversation",
            "the conversation has no assistant turn; there is nothing to train on",
        ),
    ],
    "non_utf8.jsonl": [
        (
            2,
            None,
            "non_utf8",
            "not valid UTF-8: byte 0xe9 at byte offset 13 of the line (offset 30 in the file); "
            "re-save the file as UTF-8",
        ),
    ],
    "long_line.jsonl": [
        (
            2,
            None,
            "line_too_long",
            "line is 313 bytes, over the 200-byte limit; it was not parsed (split the record or raise max_line_bytes)",
        ),
    ],
    "format_mismatch.jsonl": [
        (
            2,
            None,
            "format_mismatch",
            "expected alpaca fields (instruction, output); got keys: question, answer",
        ),
    ],
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_corpus_exact_problems(name):
    path = BAD / name
    with pytest.raises(InputError) as exc:
        read_records([path], max_line_bytes=200)
    got = [(p.file, p.line, p.field, p.reason, p.message) for p in exc.value.problems]
    assert got == [(str(path), *want) for want in BAD_CASES[name]]
    # Each bad file has one good first row, which survives with skip_invalid.
    res = read_records([path], skip_invalid=True, max_line_bytes=200)
    assert res.skipped == {BAD_CASES[name][0][2]: len(BAD_CASES[name])}
    assert res.rows_in == len(res.records) + len(BAD_CASES[name])
    assert res.records[0].meta["line"] == 1


def test_every_reason_code_is_documented():
    reasons = {case[2] for cases in BAD_CASES.values() for case in cases}
    assert reasons <= set(REASONS)
    assert set(REASONS) - reasons == {"invalid_csv"}  # covered in test_readers


def test_unknown_first_row_names_keys_and_formats():
    with pytest.raises(TunelabError) as exc:
        read_records([BAD / "unknown_format.jsonl"], skip_invalid=True)
    msg = str(exc.value)
    assert (
        "unknown_format.jsonl: line 1: cannot tell the data format from the first row (keys: query, response)"
        in msg
    )
    for fmt in FORMATS:
        assert fmt in msg
    assert "alpaca (instruction, output)" in msg and "preference (prompt, chosen, rejected)" in msg
    assert "--field prompt=q" in msg  # points at the field mapping


# -- read_records: modes, counts, the problem cap ------------------------------------------------------
def test_strict_mode_collects_across_files_then_raises():
    paths = [BAD / "missing_field.jsonl", FILES / "chat.jsonl", BAD / "unknown_role.jsonl"]
    with pytest.raises(InputError) as exc:
        read_records(paths)
    err = exc.value
    assert [(Path(p.file).name, p.line) for p in err.problems] == [
        ("missing_field.jsonl", 2),
        ("missing_field.jsonl", 3),
        ("unknown_role.jsonl", 2),
    ]
    assert err.total == 3
    assert str(err).startswith("3 of 7 row(s) are invalid (3 problem(s)); nothing was read.")
    assert "unknown_role.jsonl:2: field 'conversations[1].from': unknown role 'bot'" in str(err)


def test_skip_invalid_counts_by_reason_across_files():
    names = ["invalid_json.jsonl", "missing_field.jsonl", "no_final_assistant.jsonl", "format_mismatch.jsonl"]
    res = read_records([BAD / n for n in names], skip_invalid=True)
    assert res.skipped == {"invalid_json": 2, "missing_field": 2, "bad_conversation": 2, "format_mismatch": 1}
    assert res.rows_in == 12 and len(res.records) == 5
    assert res.problem_count == 7 and len(res.problems) == 7
    assert res.formats == {
        str(BAD / "invalid_json.jsonl"): "text",
        str(BAD / "missing_field.jsonl"): "alpaca",
        str(BAD / "no_final_assistant.jsonl"): "chat",
        str(BAD / "format_mismatch.jsonl"): "alpaca",
    }


def test_skip_reason_is_the_first_problem_of_a_row(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": "ok", "output": "ok"}, {"instruction": 3, "output": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = read_records([path], skip_invalid=True)
    assert res.skipped == {"wrong_type": 1} and res.problem_count == 2
    assert [(p.field, p.reason) for p in res.problems] == [
        ("instruction", "wrong_type"),
        ("output", "empty_field"),
    ]


def test_problem_cap_keeps_first_and_counts_all(tmp_path):
    path = tmp_path / "many.jsonl"
    lines = [json.dumps({"text": "fine"})] + [json.dumps({"text": ""})] * 120
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as exc:
        read_records([path], max_errors=10)
    err = exc.value
    assert len(err.problems) == 10 and err.total == 120
    assert [p.line for p in err.problems] == list(range(2, 12))
    assert str(err).endswith("... and 110 more")
    assert len(str(err).splitlines()) == 12
    res = read_records([path], skip_invalid=True, max_errors=5)
    assert len(res.problems) == 5 and res.problem_count == 120 and res.skipped == {"empty_field": 120}


def test_everything_invalid_is_an_error_even_when_skipping(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": ""}\n{"text": " "}\n')
    with pytest.raises(InputError, match="all 2 row.s. of .* are invalid"):
        read_records([path], skip_invalid=True)


def test_forced_format(tmp_path):
    res = read_records([FILES / "label.jsonl"], "text")
    assert [r.kind for r in res.records] == ["text", "text"]
    assert res.records[0].meta["label"] == "positive" and res.formats == {str(FILES / "label.jsonl"): "text"}
    with pytest.raises(InputError) as exc:
        read_records([FILES / "alpaca.jsonl"], "chat")
    assert {p.reason for p in exc.value.problems} == {"format_mismatch"}
    with pytest.raises(TunelabError, match="unknown data format 'csv'"):
        read_records([FILES / "alpaca.jsonl"], "csv")
    with pytest.raises(TunelabError, match="no input files"):
        read_records([])


def test_first_unreadable_rows_do_not_decide_the_format(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('not json\n{"prompt": "p", "completion": "c"}\n')
    res = read_records([path], skip_invalid=True)
    assert res.formats == {str(path): "prompt_completion"} and res.skipped == {"invalid_json": 1}


# -- to_record details ----------------------------------------------------------------------------------
def problems(row, fmt):
    record, found = to_record(row, fmt, "f.jsonl", 7)
    assert (record is None) == bool(found)
    assert all(p.file == "f.jsonl" and p.line == 7 for p in found)
    return [(p.field, p.reason, p.message) for p in found]


def test_alpaca_validation():
    assert problems({"instruction": "i", "output": "o", "input": 5}, "alpaca") == [
        ("input", "wrong_type", "expected a string, got integer")
    ]
    assert problems({"instruction": "  ", "output": "o"}, "alpaca") == [
        ("instruction", "empty_field", "is empty")
    ]
    record, _ = to_record({"instruction": "i", "output": "o", "input": " ", "system": ""}, "alpaca", "f", 1)
    assert record.messages == convo(("user", "i"), ("assistant", "o"))  # blank optional fields are ignored


def test_chat_message_problems_are_precise():
    row = {
        "messages": [
            "hello",
            {"content": "x"},
            {"role": 1, "content": "x"},
            {"role": "user"},
            {"role": "user", "content": None},
            {"role": "assistant", "content": ["part"]},
        ]
    }
    assert problems(row, "chat") == [
        ("messages[0]", "wrong_type", "expected an object with 'role' and 'content', got string"),
        ("messages[1].role", "missing_field", "missing required field"),
        ("messages[2].role", "wrong_type", "expected a string, got integer"),
        ("messages[3].content", "missing_field", "missing required field"),
        ("messages[4].content", "missing_field", "is null"),
        ("messages[5].content", "wrong_type", "expected a string, got array"),
    ]
    assert problems({"messages": "hi"}, "chat") == [
        ("messages", "wrong_type", "expected an array of messages, got string")
    ]


def test_conversation_rules():
    ok = {"messages": convo(("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"))}
    assert problems(ok, "chat") == []  # repeated roles are allowed
    assert problems({"messages": convo(("User", "a"), ("ASSISTANT", "b"))}, "chat") == []
    assert problems({"messages": convo(("assistant", "a"))}, "chat") == [
        ("messages", "bad_conversation", "the conversation has no user turn")
    ]
    assert problems({"messages": convo(("user", "a"), ("system", "s"), ("assistant", "b"))}, "chat") == [
        ("messages[1]", "bad_conversation", "a system message is only allowed as the first turn")
    ]
    tool = convo(("user", "a"), ("assistant", "call"), ("tool", "42"), ("assistant", "It is 42."))
    assert problems({"messages": tool}, "chat") == []


def test_sharegpt_system_field_and_turn_conflict():
    row = {
        "system": "s",
        "conversations": [
            {"from": "system", "value": "t"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ],
    }
    assert problems(row, "sharegpt") == [
        ("system", "bad_conversation", "both a 'system' field and a system turn in conversations; keep one")
    ]


def test_prompt_completion_conversational_paths():
    row = {"prompt": convo(("user", "q")), "completion": convo(("assistant", "a"), ("user", "more?"))}
    assert problems(row, "prompt_completion") == [
        (
            "completion[1]",
            "bad_conversation",
            "the conversation ends with a user turn; the last turn must be the assistant's",
        )
    ]


def test_label_types():
    assert problems({"text": "t", "label": True}, "label") == [
        ("label", "wrong_type", "expected a string or an integer, got boolean")
    ]
    assert problems({"text": "t", "label": 1.5}, "label") == [
        ("label", "wrong_type", "expected a string or an integer, got number")
    ]
    assert problems({"text": "t"}, "label") == [("label", "missing_field", "missing required field")]
    record, _ = to_record({"text": "t", "label": " pos "}, "label", "f", 1)
    assert record.label == "pos"


def test_preference_validation():
    assert problems(
        {"prompt": convo(("user", "q"), ("assistant", "a")), "chosen": "c", "rejected": "r"}, "preference"
    ) == [
        (
            "prompt[1]",
            "bad_conversation",
            "the conversation ends with an assistant turn; the last turn must be the user's",
        )
    ]
    assert problems(
        {"prompt": "q", "chosen": convo(("assistant", "a"), ("assistant", "b")), "rejected": "r"},
        "preference",
    ) == [
        (
            "chosen",
            "bad_conversation",
            "must be exactly one assistant reply after the prompt; got turns: assistant, assistant",
        )
    ]
    assert problems({"chosen": "c", "rejected": "r"}, "preference")[0][:2] == ("prompt", "missing_field")
    same = convo(("user", "q"), ("assistant", "a"))
    assert problems({"chosen": same, "rejected": same}, "preference") == [
        ("rejected", "bad_conversation", "is the same reply as chosen; the pair teaches nothing")
    ]
    # Implicit prompt: the shared turns (system + user) become the prompt, the rest the replies.
    chosen = convo(("system", "s"), ("user", "q"), ("assistant", "good"))
    rejected = convo(("system", "s"), ("user", "q"), ("assistant", "bad"))
    record, _ = to_record({"chosen": chosen, "rejected": rejected}, "preference", "f", 1)
    assert (record.messages, record.chosen, record.rejected) == (chosen[:2], "good", "bad")
    assert problems(
        {
            "chosen": convo(("user", "a"), ("assistant", "x")),
            "rejected": convo(("user", "b"), ("assistant", "y")),
        },
        "preference",
    ) == [
        (
            "chosen",
            "bad_conversation",
            "chosen and rejected share no prompt turns and there is no 'prompt' field",
        )
    ]


def test_meta_keeps_unused_fields_and_merges_meta_object():
    row = {"text": "t", "id": 3, "meta": {"source": "doc.md", "file": "old.jsonl"}, "skip": None}
    record, _ = to_record(row, "text", "new.jsonl", 9)
    assert record.meta == {"id": 3, "source": "doc.md", "file": "new.jsonl", "line": 9, "format": "text"}


# -- speed ---------------------------------------------------------------------------------------------
def test_read_speed_small_chat_rows(tmp_path):
    n = 20_000
    row = {
        "messages": convo(
            ("system", "Be brief."), ("user", "What is the leave policy?"), ("assistant", "25 days.")
        )
    }
    path = tmp_path / "big.jsonl"
    path.write_text((json.dumps(row) + "\n") * n)
    start = time.process_time()
    res = read_records([path])
    elapsed = time.process_time() - start
    assert len(res.records) == n
    # About 0.4 s here for 20k rows (2 s per 100k); the bound only catches an accidental slow path.
    assert elapsed < 5.0, f"{n} rows took {elapsed:.2f}s of CPU"
