"""Raw documents in data.train become text records, rewritten only when the documents change."""

from __future__ import annotations

import pytest

from tunelab.config import DataConfig
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.train.documents import documents_to_records


def test_documents_become_text_records_once(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Title A\n\nBody of the first document.\n", encoding="utf-8")
    (docs / "b.txt").write_text("Second document text.\n", encoding="utf-8")
    other = tmp_path / "qa.jsonl"
    other.write_text('{"text": "kept as is"}\n', encoding="utf-8")
    data = DataConfig(train=[docs, other])
    out = tmp_path / "run" / "data"
    converted, info = documents_to_records(data, out)
    target = tmp_path / "run" / "data-documents" / "documents.jsonl"
    assert converted.train == [other, target] and info["documents"] == 2 and info["skipped"] == []
    rows = read_jsonl(target)
    assert [(r["source"], r["title"]) for r in rows] == [("a.md", "Title A"), ("b.txt", "b")]
    assert "Body of the first document." in rows[0]["text"]
    stamp = target.stat().st_mtime_ns
    documents_to_records(data, out)
    assert target.stat().st_mtime_ns == stamp  # unchanged documents: the prepared dataset stays valid
    (docs / "b.txt").write_text("Changed.\n", encoding="utf-8")
    documents_to_records(data, out)
    assert read_jsonl(target)[1]["text"].strip() == "Changed."


def test_document_input_errors(tmp_path):
    assert documents_to_records(DataConfig(train=[tmp_path / "x.jsonl"]), tmp_path / "d") == (
        DataConfig(train=[tmp_path / "x.jsonl"]), None)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pic.png").write_bytes(b"\x89PNG")
    with pytest.raises(TunelabError, match="no readable document .*pic.png"):
        documents_to_records(DataConfig(train=[empty]), tmp_path / "d")
    with pytest.raises(TunelabError, match="not found"):
        documents_to_records(DataConfig(train=[tmp_path / "missing.md"]), tmp_path / "d")
    (empty / "ok.md").write_text("text\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="data.format is chat"):
        documents_to_records(DataConfig(train=[empty], format="chat"), tmp_path / "d")


def test_a_synth_output_directory_is_data_not_documents(tmp_path):
    out = tmp_path / "synth-out"
    out.mkdir()
    (out / "train.jsonl").write_text('{"text": "a record"}\n', encoding="utf-8")
    (out / "manifest.json").write_text('{"tunelab_synth": 1, "eval_set": {"how": "none"}}', encoding="utf-8")
    data = DataConfig(train=[out])
    assert documents_to_records(data, tmp_path / "d") == (data, None)
    # any other directory is documents, as before (here none readable)
    (out / "manifest.json").write_text('{"tunelab_dataset": 1}', encoding="utf-8")
    with pytest.raises(TunelabError, match="no readable document"):
        documents_to_records(data, tmp_path / "d")


def test_the_field_mapping_reaches_the_training_data_and_not_documents(tmp_path):
    from tunelab.train.run import prepare_data

    faq = tmp_path / "faq.jsonl"
    faq.write_text("".join(f'{{"q": "Question {i}?", "a": "Answer {i}."}}\n' for i in range(4)), encoding="utf-8")
    data = DataConfig(train=[faq], fields={"prompt": "q", "completion": "a"}, dedup="none")
    manifest = prepare_data(data, tmp_path / "run" / "data")
    assert manifest["formats"] == {str(faq): "prompt_completion"} and manifest["records_valid"] == 4
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("text\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="data.fields maps the field names of data files"):
        documents_to_records(data.model_copy(update={"train": [docs]}), tmp_path / "d")
