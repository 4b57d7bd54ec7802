"""The one wording of validation errors (config.messages): files name the line, options the flag."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tunelab.config import RagConfig, load_config, options_error
from tunelab.errors import ConfigError


def test_did_you_mean_reaches_into_optional_sections(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\nsynth:\n  docs: d\n  teacher: openai:m@http://h/v1\n  per_chunks: 3\n"
                    "eval:\n  judge: {spec: 'openai:m@http://h/v1', concurency: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["synth.per_chunks (line 5): unknown key; did you mean 'per_chunk'?",
                                 "eval.judge.concurency (line 7): unknown key; did you mean 'concurrency'?"]


def test_options_are_located_by_their_flag_and_section():
    with pytest.raises(ValidationError) as info:
        RagConfig(chunk_tokens=0, top_k=0)
    err = options_error(info.value, "rag", {"rag.chunk_tokens": "--chunk-tokens"})
    assert err.source == "options"
    # an option without a flag of its own is still named by its dotted path
    assert err.errors == ["rag.top_k: must be > 0, got 0", "rag.chunk_tokens (--chunk-tokens): must be > 0, got 0"]
