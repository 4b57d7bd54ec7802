"""Field mappings (data.fields / --field): other field names read as a format's, with line-located errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tunelab.config import DATA_FIELDS, DataConfig, load_config
from tunelab.data import formats
from tunelab.data.formats import read_records
from tunelab.data.prepare import load_split, run
from tunelab.errors import ConfigError, InputError, TunelabError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_mappable_fields_are_exactly_the_formats_fields():
    assert set(DATA_FIELDS) == set().union(*formats._USED.values())


def test_jsonl_mapped_to_prompt_completion_keeps_other_fields_in_meta(tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", [{"q": "Payday?", "a": "The 25th.", "topic": "pay"}] * 2)
    res = read_records([path], fields={"prompt": "q", "completion": "a"})
    assert res.formats == {str(path): "prompt_completion"}
    rec = res.records[0]
    assert rec.messages == [{"role": "user", "content": "Payday?"}, {"role": "assistant", "content": "The 25th."}]
    assert rec.meta == {"topic": "pay", "file": str(path), "line": 1, "format": "prompt_completion"}


def test_csv_mapping_with_an_optional_field_empty_on_some_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("task,extra,result\nTranslate,Good morning,Bonjour\nSay hi,,Hi!\n", encoding="utf-8")
    res = read_records([path], fields={"instruction": "task", "input": "extra", "output": "result"})
    assert [r.messages[0]["content"] for r in res.records] == ["Translate\n\nGood morning", "Say hi"]
    assert res.formats == {str(path): "alpaca"}


def test_mapped_source_wins_and_the_format_can_be_forced(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "old", "body": "new", "label": "a"}])
    res = read_records([path], "text", fields={"text": "body"})
    assert res.records[0].text == "new" and res.records[0].kind == "text"


def test_problems_name_the_line_and_the_users_field(tmp_path):
    path = write_jsonl(
        tmp_path / "faq.jsonl",
        [
            {"q": "Payday?", "a": "The 25th."},
            {"q": "Leave?"},
            {"q": "Badge?", "a": "   "},
            {"q": "Notice?", "a": None},
        ],
    )
    with pytest.raises(InputError) as info:
        read_records([path], fields={"prompt": "q", "completion": "a"})
    err = info.value
    assert [(p.line, p.field, p.reason) for p in err.problems] == [
        (2, "a", "missing_field"),
        (3, "a", "empty_field"),
        (4, "a", "missing_field"),
    ]
    assert f"{path}:2: field 'a': missing required field (read as 'completion')" in str(err)
    assert f"{path}:3: field 'a': is empty (read as 'completion')" in str(err)
    assert f"{path}:4: field 'a': is null (read as 'completion')" in str(err)


def test_nested_problems_point_into_the_users_field(tmp_path):
    turns = [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hello"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"dialog": turns}])
    with pytest.raises(InputError) as info:
        read_records([path], fields={"messages": "dialog"})
    (problem,) = info.value.problems
    assert (problem.line, problem.field, problem.reason) == (1, "dialog[1].role", "unknown_role")
    assert problem.message.endswith("(read as 'messages')")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"promt": "q"}, r"unknown field 'promt' \(in promt: q\); did you mean 'prompt'\?"),
        ({"body": "q"}, r"unknown field 'body' \(in body: q\); fields a mapping can name: instruction, input"),
        ({"prompt": "q", "completion": "q"}, r"'q' is mapped to more than one field \(prompt, completion\)"),
        ({"prompt": " "}, r"'prompt' is mapped to an empty field name"),
    ],
)
def test_bad_mappings_are_errors_naming_the_key(tmp_path, fields, match):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "a", "a": "b"}])
    with pytest.raises(TunelabError, match="field mapping: " + match):
        read_records([path], fields=fields)
    with pytest.raises(ValidationError, match=match):
        DataConfig(train=[path], fields=fields)


def test_config_file_mapping_error_names_the_key_and_line(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: x\ndata:\n  train: faq.jsonl\n  fields:\n    promt: q\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.errors == [
        "data.fields (line 4): unknown field 'promt' (in promt: q); did you mean 'prompt'?"
    ]


def test_prepare_reads_train_and_eval_through_the_mapping(tmp_path):
    rows = [{"q": f"Question number {i}?", "a": f"Answer number {i}."} for i in range(6)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    held = write_jsonl(tmp_path / "eval.jsonl", [{"q": "A held-out question?", "a": "A held-out answer."}])
    cfg = DataConfig(train=[train], eval=held, fields={"prompt": "q", "completion": "a"}, dedup="none")
    result = run(cfg, tmp_path / "out")
    assert result.manifest["formats"] == {str(train): "prompt_completion", str(held): "prompt_completion"}
    assert result.manifest["options"]["fields"] == {"prompt": "q", "completion": "a"}
    assert load_split(tmp_path / "out", "eval")[0].messages[0]["content"] == "A held-out question?"
