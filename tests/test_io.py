"""Atomic writes: a failure mid-write leaves the previous file or directory exactly as it was; an output
directory is replaced only when it is tunelab's own output of the same kind."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.io import (
    OUTPUT_MARKER,
    atomic_dir,
    atomic_open,
    check_output_dir,
    claim_output_dir,
    output_kind,
    read_jsonl,
    write_json,
    write_jsonl,
)


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
    with atomic_dir(out, kind="test") as tmp:
        (tmp / "one").write_text("1")
    assert (out / "one").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(out, kind="test") as tmp:
        (tmp / "two").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "one"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    with atomic_dir(out, kind="test") as tmp:
        (tmp / "two").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "two"]
    assert output_kind(out) == "test"


def test_atomic_dir_refuses_to_replace_without_overwrite(tmp_path):
    out = tmp_path / "ds"
    with atomic_dir(out, kind="test") as tmp:
        (tmp / "mine").write_text("earlier output")
    with pytest.raises(TunelabError, match="not empty"), atomic_dir(out, kind="test", overwrite=False):
        pass
    assert (out / "mine").read_text() == "earlier output"


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_atomic_dir_never_replaces_a_folder_tunelab_did_not_write(tmp_path):
    # `data prepare data/train.jsonl --out data` used to delete the user's input with the folder
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "mine"}\n')
    (data / "notes.md").write_text("notes")
    before = _tree(data)
    with pytest.raises(TunelabError, match="holds files tunelab did not write") as err, \
            atomic_dir(data, kind="prepare") as tmp:
        (tmp / "train.jsonl").write_text("new")
    assert str(data) in str(err.value)
    assert _tree(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary left behind


def test_atomic_dir_replaces_only_its_own_kind(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, kind="synth") as tmp:
        (tmp / "train.jsonl").write_text("synth")
    with pytest.raises(TunelabError, match=r"another kind \(synth, not prepare\)"), \
            atomic_dir(out, kind="prepare"):
        pass
    assert (out / "train.jsonl").read_text() == "synth"
    with atomic_dir(out, kind="synth") as tmp:  # its own kind: replaced
        (tmp / "train.jsonl").write_text("again")
    assert (out / "train.jsonl").read_text() == "again"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, kind="prepare") as tmp:  # an empty folder holds nothing to lose
        (tmp / "x").write_text("x")
    assert output_kind(empty) == "prepare"


def test_an_input_inside_the_output_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, kind="prepare") as tmp:
        (tmp / "train.jsonl").write_text("prepared")
    # even tunelab's own output is not replaced while it holds this command's input
    with pytest.raises(TunelabError, match="lies inside the output directory"):
        check_output_dir(out, "prepare", [out / "train.jsonl"])
    with pytest.raises(TunelabError, match="lies inside"), atomic_dir(out, kind="prepare", inputs=[out]):
        pass
    assert (out / "train.jsonl").read_text() == "prepared"
    check_output_dir(out, "prepare", [tmp_path / "elsewhere.jsonl"])


def test_claim_marks_a_folder_written_into_and_refuses_a_foreign_one(tmp_path):
    run = claim_output_dir(tmp_path / "runs" / "exp", "run")
    assert output_kind(run) == "run"
    (run / "summary.json").write_text("{}")
    assert claim_output_dir(run, "run") == run  # its own: accepted again
    with pytest.raises(TunelabError, match=r"another kind \(run, not eval\)"):
        claim_output_dir(run, "eval")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("a")
    with pytest.raises(TunelabError, match="did not write"):
        claim_output_dir(mine, "run")
    assert sorted(p.name for p in mine.iterdir()) == ["a.txt"]
    afile = tmp_path / "file"
    afile.write_text("f")
    with pytest.raises(TunelabError, match="not a directory"):
        claim_output_dir(afile, "run")
