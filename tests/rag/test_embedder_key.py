"""An index is rebuilt when the embedding model's files change in content, even to the same size."""

from __future__ import annotations

from content_edits import rewrite_keeping_mtime

from tunelab.rag.embedder import _fingerprint


def test_embedder_fingerprint_follows_the_weights_content(tmp_path):
    model = tmp_path / "embedder"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"AAAA")
    first = _fingerprint(model)
    assert _fingerprint(model) == first  # unchanged: the index is reused
    rewrite_keeping_mtime(model / "model.safetensors", b"BBBB")  # same name, size and mtime
    assert _fingerprint(model) != first
