"""Atomic writes: a failure mid-write leaves the previous file or directory exactly as it was."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, atomic_open, read_jsonl, write_json, write_jsonl


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_jsonl_round_trip(tmp_path):
    rows = [{"a": 1, "b": "é"}, {"a": 2}]
    assert write_jsonl(tmp_path / "x.jsonl", rows) == 2
    assert read_jsonl(tmp_path / "x.jsonl") == rows
    write_json(tmp_path / "x.json", {"k": [1, 2]})
    assert (tmp_path / "x.json").read_text().startswith("{")


def test_atomic_dir_replaces_whole_or_nothing(tmp_path):
    out = tmp_path / "ds"
    with atomic_dir(out) as tmp:
        (tmp / "one").write_text("1")
    assert (out / "one").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "two").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in out.iterdir()) == ["one"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    with atomic_dir(out) as tmp:
        (tmp / "two").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["two"]


def test_atomic_dir_refuses_to_replace_without_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine").write_text("user data")
    with pytest.raises(TunelabError, match="not empty"), atomic_dir(out, overwrite=False):
        pass
    assert (out / "mine").read_text() == "user data"
