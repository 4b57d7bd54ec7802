"""GGUF -> safetensors conversion and the pull cache, on a tiny F32 GGUF (seconds, no real model)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models import convert as convert_mod
from tunelab.models.gguf_meta import read_gguf_header
from tunelab.models.registry import PROVENANCE_FILE, is_pulled, pull, resolve


def _logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_header_reader(tiny_gguf, tiny_model_dir):
    header = read_gguf_header(tiny_gguf, keep_arrays=("tokenizer.ggml.tokens",))
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert header.architecture == "llama"
    assert header.arch_value("block_count") == cfg["num_hidden_layers"]
    shape = header.shape_config()
    assert shape["hidden_size"] == 32 and shape["num_key_value_heads"] == 2 and shape["tie_word_embeddings"]
    assert header.vocab_size == cfg["vocab_size"]
    assert header.token(header.metadata["tokenizer.ggml.eos_token_id"]) == "<|im_end|>"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert header.n_params == sum(p.numel() for p in model.parameters())


def test_header_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely not gguf")
    with pytest.raises(TunelabError, match="not a readable GGUF"):
        read_gguf_header(bad)


def test_pull_gguf_file_matches_original_logits(tiny_gguf, tiny_model_dir, tiny_tokenizer, tunelab_home):
    ref = resolve(str(tiny_gguf))
    assert ref.kind == "gguf" and not is_pulled(ref)
    path = pull(ref)
    assert path.parent == tunelab_home / "models" and is_pulled(ref)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    ids = tiny_tokenizer("Employees get 25 days of paid leave per year.")["input_ids"]
    assert torch.allclose(_logits(path, ids), _logits(tiny_model_dir, ids), atol=1e-5)

    prov = json.loads((path / PROVENANCE_FILE).read_text())
    assert prov["source"]["kind"] == "gguf" and len(prov["gguf_sha256"]) == 64
    assert prov["template"]["name"] == "chatml" and prov["template"]["source"] == "model"
    assert prov["licence"] == "apache-2.0" and prov["n_params"] > 0 and prov["created"]
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_second_pull_is_a_cache_hit(tiny_gguf, tunelab_home, monkeypatch):
    first = pull(str(tiny_gguf))
    stamp = os.stat(first / PROVENANCE_FILE).st_mtime_ns

    def boom(*_a, **_k):
        raise AssertionError("converted twice")

    monkeypatch.setattr("tunelab.models.registry.convert_gguf", boom)
    assert pull(str(tiny_gguf)) == first
    assert os.stat(first / PROVENANCE_FILE).st_mtime_ns == stamp


def test_template_less_gguf_gets_and_saves_default(tiny_gguf_no_template, tunelab_home):
    from transformers import AutoTokenizer

    from tunelab.models.templates import CHATML_TEMPLATE, template_info

    path = pull(str(tiny_gguf_no_template))
    prov = json.loads((path / PROVENANCE_FILE).read_text())
    assert prov["template"]["source"] == "tunelab-default" and prov["template"]["name"] == "chatml"
    reloaded = AutoTokenizer.from_pretrained(path)
    assert reloaded.chat_template == CHATML_TEMPLATE
    assert template_info(reloaded) == prov["template"]


def test_interrupted_pull_leaves_no_cache(tiny_gguf, tunelab_home, monkeypatch):
    real_save = convert_mod.convert_gguf

    def dies_after_writing(gguf, out_dir, **kw):
        real_save(gguf, out_dir, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr("tunelab.models.registry.convert_gguf", dies_after_writing)
    with pytest.raises(KeyboardInterrupt):
        pull(str(tiny_gguf))
    ref = resolve(str(tiny_gguf))
    assert not ref.cache_dir().exists() and not is_pulled(ref)
    leftovers = [p.name for p in (tunelab_home / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
