"""The prepared dataset is reused by the content of its inputs: unchanged inputs are not prepared again,
an input whose bytes change is, even with its old size and modification time."""

from __future__ import annotations

import json

from content_edits import rewrite_keeping_mtime

from tunelab.config import DataConfig
from tunelab.train.run import prepare_data


def _rows(answer: str) -> bytes:
    rows = [{"prompt": f"question {i}?", "completion": f"{answer} {i}"} for i in range(10)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_prepared_data_follows_input_content(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_bytes(_rows("answer"))
    data = DataConfig(train=[src], split={"train": 0.8, "validation": 0.2}, dedup="none")
    out = tmp_path / "prepared"
    first = prepare_data(data, out)
    written = (out / "manifest.json").stat()
    assert prepare_data(data, out)["dataset_hash"] == first["dataset_hash"]
    assert (out / "manifest.json").stat().st_ino == written.st_ino  # reused, not rewritten

    rewrite_keeping_mtime(src, _rows("ANSWER"))  # same size, same mtime, other text
    again = prepare_data(data, out)
    assert again["dataset_hash"] != first["dataset_hash"]
    assert "ANSWER 0" in (out / "train.jsonl").read_text() + (out / "validation.jsonl").read_text()
