"""Spec strings and the backend registry."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.llm import CachedBackend, OpenAIBackend, backend_from_spec, backend_kinds, parse_spec


def test_openai_specs():
    s = parse_spec("openai:llama3.1@http://localhost:11434/v1/")
    assert (s.kind, s.model, s.base_url, s.adapter) == ("openai", "llama3.1", "http://localhost:11434/v1", None)
    # Ollama tags contain ':'; only the first ':' separates the kind
    s = parse_spec("openai:qwen2.5:7b-instruct@https://host:8443/api/v1")
    assert (s.model, s.base_url) == ("qwen2.5:7b-instruct", "https://host:8443/api/v1")
    assert parse_spec("OpenAI:gpt-4o-mini").base_url is None


def test_openai_base_url_from_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    b = backend_from_spec("openai:m")
    assert isinstance(b, OpenAIBackend) and b.url == "http://127.0.0.1:9/v1/chat/completions"
    assert b.name == "openai:m@http://127.0.0.1:9/v1"


def test_local_specs():
    assert parse_spec("local:smollm2-135m-instruct").model == "smollm2-135m-instruct"
    s = parse_spec("local:/models/base+runs/exp+v2/train")
    assert (s.model, s.adapter) == ("/models/base", "runs/exp+v2/train")


@pytest.mark.parametrize("spec, message", [
    ("", "is not KIND:MODEL"),
    ("llama3.1", "is not KIND:MODEL"),
    ("openai:", "is not KIND:MODEL"),
    ("anthropic:claude", "unknown backend kind 'anthropic'"),
    ("openai:m@localhost:11434", "must be an http(s):// base URL"),
    ("local:m+", "nothing after '+'"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(TunelabError) as exc:
        parse_spec(spec)
    assert message in str(exc.value)


def test_registry_lists_kinds_and_cache_option(tmp_path):
    assert set(backend_kinds()) >= {"openai", "local"}
    b = backend_from_spec("openai:m@http://127.0.0.1:9/v1", cache=tmp_path / "c")
    assert isinstance(b, CachedBackend) and b.name == "openai:m@http://127.0.0.1:9/v1"
    assert b.cache.root == tmp_path / "c"
    with pytest.raises(TunelabError, match="no adapter_config.json"):
        backend_from_spec(f"local:m+{tmp_path}")
