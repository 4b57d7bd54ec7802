"""Model caches are keyed by content: a GGUF converts again when its bytes change (not when it is only
touched), and a bundled model's conversion is redone when its packages' content changes."""

from __future__ import annotations

import json
import os
import shutil

from content_edits import nudge_weights, rewrite_keeping_mtime

from tunelab.models import registry
from tunelab.models.bundled import BundledModel
from tunelab.models.registry import CACHE_FORMAT, PROVENANCE_FILE, is_pulled, model_digest, resolve


def test_gguf_cache_dir_follows_the_file_content(tmp_path, tunelab_home):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF one")
    first = resolve(str(gguf)).cache_dir()
    os.utime(gguf, ns=(1, 1))  # touched only: the same conversion is reused
    assert resolve(str(gguf)).cache_dir() == first
    rewrite_keeping_mtime(gguf, b"GGUF two")  # other bytes, same size and mtime: converted again
    assert resolve(str(gguf)).cache_dir() != first


def test_bundled_cache_is_stale_when_its_packages_change(tunelab_home, monkeypatch):
    ref = resolve("smollm2-135m-instruct")
    target = ref.cache_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"w")
    (target / PROVENANCE_FILE).write_text(json.dumps({"format": CACHE_FORMAT, "source": {"sha256": "old"}}))
    monkeypatch.setattr(BundledModel, "is_installed", lambda self: True)
    monkeypatch.setattr(registry, "_bundled_digest", lambda model: "old")
    assert is_pulled(ref)
    monkeypatch.setattr(registry, "_bundled_digest", lambda model: "new")
    assert not is_pulled(ref)


def test_model_digest_is_the_content_of_the_model_files(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    first = model_digest(str(model))
    assert model_digest(str(model)) == first
    (model / PROVENANCE_FILE).write_text('{"created": "now"}')  # tunelab's note is not content
    assert model_digest(str(model)) == first
    nudge_weights(model)
    assert model_digest(str(model)) != first

