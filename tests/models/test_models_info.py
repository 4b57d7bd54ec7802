"""`models info` facts come from metadata (config, safetensors headers, GGUF header), not full loads."""

from __future__ import annotations

import json

from tunelab.models.info import human_count, list_models, model_info, safetensors_param_count


def test_info_for_local_dir(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    info = model_info(str(tiny_model_dir), seq_len=128, batch=2, lora_r=2)
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert info["kind"] == "local" and info["architecture"] == "LlamaForCausalLM"
    assert info["n_params"] == n == safetensors_param_count(tiny_model_dir)
    assert info["context_length"] == 256 and info["vocab_size"] > 0 and info["num_layers"] == 2
    assert info["chat_template"]["present"] and info["chat_template"]["name"] == "chatml"
    assert info["licence"] == "unknown"
    mem = info["memory"]
    assert mem["settings"]["seq_len"] == 128
    # tiny model: compare bytes, GiB rounds to 0; r=2 because r=16 adapters outsize 32x32 layers
    assert mem["qlora"]["total_bytes"] < mem["lora"]["total_bytes"] < mem["full"]["total_bytes"]
    assert isinstance(info["bf16"]["pays"], bool) and info["bf16"]["reason"]


def test_card_licence_is_read(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n# Model\n")
    assert model_info(str(copy))["licence"] == "mit"


def test_info_from_gguf_header_without_pulling(tiny_gguf_no_template, tunelab_home):
    notes = []
    info = model_info(str(tiny_gguf_no_template), notice=notes.append)
    assert not info["pulled"] and info["metadata_source"].startswith("GGUF header")
    assert info["architecture"] == "LlamaForCausalLM" and info["licence"] == "apache-2.0"
    assert info["chat_template"] | {"sha256": None} == {
        "present": False, "name": "chatml", "source": "tunelab-default", "eos_token": "<|im_end|>",
        "stop_tokens": ["<|im_end|>"], "sha256": None}
    assert not any((tunelab_home / "models").glob("gguf-*"))  # info did not convert anything


def test_list_models(tunelab_home):
    result = list_models()
    rows = {m["name"]: m for m in result["models"]}
    assert set(rows) == {"smollm2-135m-instruct", "gemma3-270m"}
    assert rows["gemma3-270m"]["licence"] == "Gemma Terms of Use"
    assert rows["smollm2-135m-instruct"]["licence"] == "apache-2.0"
    assert rows["gemma3-270m"]["chat_template"] == {"name": "gemma-turns", "source": "tunelab-default"}
    assert all(isinstance(m["installed"], bool) and m["pulled"] is False for m in rows.values())
    json.dumps(result)


def test_human_count():
    assert human_count(134_515_008) == "134.5M" and human_count(1_230_000_000) == "1.2B"
    assert human_count(None) == "unknown"
