"""tunelab.digest: keys follow content, not names or modification times, and big files are read once."""

from __future__ import annotations

import json
import os

import pytest

from tunelab import digest


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(digest, "_memo", {})
    return tmp_path / "home"


def test_file_digest_is_the_content_not_the_mtime(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    os.utime(b, ns=(1, 1))
    assert digest.file_digest(a) == digest.file_digest(b) == digest.text_digest("weights")


def test_an_edit_that_keeps_size_and_mtime_is_seen(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"AAAA")
    before = digest.file_digest(f)
    st = f.stat()
    f.write_bytes(b"BBBB")  # same size, and the old mtime put back (cp -p, rsync -t, touch -d)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    assert digest.file_digest(f) != before == digest.text_digest("AAAA")


def test_a_file_changed_in_the_last_moments_is_not_remembered(tmp_path, monkeypatch):
    f = tmp_path / "adapter_model.safetensors"
    f.write_bytes(b"AAAA")
    digest.file_digest(f)
    assert digest._memo == {}  # its time stamps may not yet tell a second edit from this one
    monkeypatch.setattr(digest, "RACY_NS", -10**18)
    digest.file_digest(f)
    assert list(digest._memo.values()) == [digest.text_digest("AAAA")]


def test_big_files_are_remembered_in_a_sidecar_by_identity(tmp_path, home, monkeypatch):
    monkeypatch.setattr(digest, "SIDECAR_MIN_BYTES", 4)
    monkeypatch.setattr(digest, "RACY_NS", -10**18)  # as if the file had been written long ago
    f = tmp_path / "big.safetensors"
    f.write_bytes(b"0123456789")
    real = digest.file_digest(f)
    (sidecar,) = (home / "digests").rglob("*.json")
    assert json.loads(sidecar.read_text())["sha256"] == real
    # a later process (empty memo) takes the sidecar's word instead of reading the file again ...
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(data | {"sha256": "from-the-sidecar"}))
    monkeypatch.setattr(digest, "_memo", {})
    assert digest.file_digest(f) == "from-the-sidecar"
    # ... but only while the file is the one it describes
    f.write_bytes(b"9876543210")
    assert digest.file_digest(f) == digest.text_digest("9876543210")


def test_directory_digest_covers_every_file_and_its_name(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"w")
    first = digest.path_digest(d)
    (d / ".lock").write_text("hidden files are not content")
    (d / "note.json").write_text('{"created": "now"}')
    assert digest.path_digest(d, skip=("note.json",)) == first
    (d / "sub" / "w.bin").write_bytes(b"v")
    assert digest.path_digest(d, skip=("note.json",)) != first
    (d / "sub" / "w.bin").write_bytes(b"w")
    (d / "sub" / "w.bin").rename(d / "sub" / "x.bin")
    assert digest.path_digest(d, skip=("note.json",)) != first


def test_paths_digest_counts_missing_inputs(tmp_path):
    f = tmp_path / "train.jsonl"
    assert digest.paths_digest([f, None]) != digest.paths_digest([])
    f.write_text("{}\n")
    assert digest.paths_digest([f, None]) == digest.paths_digest([f])
