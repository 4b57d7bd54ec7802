"""Fixtures for the model registry tests: a tiny GGUF written from the tiny Llama fixture.

The GGUF is written the way llama.cpp's converter lays out a Llama checkpoint (tests/support/tiny_gguf.py),
in F32, so converting it back must give exactly the original model's logits. That tests the whole GGUF ->
safetensors path in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_gguf import write_tiny_gguf  # tests/support is on pythonpath


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny F32 Llama GGUF (the fixture's ChatML template inside) made from the tiny_model_dir weights."""
    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.F32.gguf"
    return write_tiny_gguf(tiny_model_dir, out, tiny_tokenizer.chat_template)


@pytest.fixture(scope="session")
def tiny_gguf_no_template(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-gguf-plain") / "tiny-llama-base.F32.gguf"
    return write_tiny_gguf(tiny_model_dir, out, None)


@pytest.fixture
def tunelab_home(tmp_path, monkeypatch) -> Path:
    """An empty tunelab home for one test, so nothing touches the user's cache."""
    home = tmp_path / "tunelab-home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    return home
