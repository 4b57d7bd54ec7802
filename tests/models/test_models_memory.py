"""Training-memory estimates: components add up and scale the way the formulas say."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.models.memory import ArchShape, estimate_all_methods, estimate_training_memory

SMOL = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}
N_SMOL = 134_515_008


def total(method, **kw):
    return estimate_training_memory(N_SMOL, SMOL, method, **kw)["total_gib"]


def test_methods_order():
    assert total("qlora") < total("lora") < total("full")


def test_grows_with_sequence_and_batch():
    for method in ("full", "lora", "qlora"):
        assert total(method, seq_len=256) < total(method, seq_len=512) < total(method, seq_len=1024)
        assert total(method, batch=1) < total(method, batch=8)


def test_components_add_up_and_match_formulas():
    est = estimate_training_memory(N_SMOL, SMOL, "full", seq_len=512, batch=8)
    parts = est["bytes"]
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert parts["weights"] == N_SMOL * 4 and parts["gradients"] == N_SMOL * 4
    assert parts["optimizer_states"] == N_SMOL * 8  # AdamW: two fp32 states
    assert parts["logits_and_loss"] == 512 * 8 * 49152 * 12
    per_token = 4 * 576 + 2 * 576 + 2 * 192 + 4 * 1536
    assert parts["activations"] == 30 * 512 * 8 * per_token * 4


def test_lora_and_qlora_parts():
    shape = ArchShape.from_config(SMOL)
    lora = estimate_training_memory(N_SMOL, shape, "lora", lora_r=16)
    qlora = estimate_training_memory(N_SMOL, shape, "qlora", lora_r=16)
    expected_lora = 30 * 16 * (576 + 576 + 2 * (576 + 192) + (576 + 576) + 2 * (576 + 1536) + (1536 + 576))
    assert lora["trainable_params"] == expected_lora == qlora["trainable_params"]
    assert lora["bytes"]["optimizer_states"] == expected_lora * 8
    linear = shape.block_linear_params()
    assert qlora["bytes"]["weights"] == int(linear * (0.5 + 4 / 64) + (N_SMOL - linear) * 4)
    assert estimate_training_memory(N_SMOL, shape, "lora", lora_r=64)["total_gib"] > lora["total_gib"]


def test_knobs_move_activations_the_right_way():
    base = estimate_training_memory(N_SMOL, SMOL, "lora")["bytes"]["activations"]
    assert estimate_training_memory(N_SMOL, SMOL, "lora", attention="eager")["bytes"]["activations"] > base
    assert estimate_training_memory(N_SMOL, SMOL, "lora", gradient_checkpointing=True)["bytes"]["activations"] < base
    assert estimate_training_memory(N_SMOL, SMOL, "lora", lora_dropout=0.05)["bytes"]["activations"] > base
    assert estimate_training_memory(N_SMOL, SMOL, "full", dtype="bfloat16")["total_gib"] < total("full")


def test_estimated_params_exact_for_llama(tiny_model_dir):
    import json

    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_model_dir / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert ArchShape.from_config(config).estimated_params() == sum(p.numel() for p in model.parameters())
    assert estimate_training_memory(None, config, "full")["n_params"] == model.num_parameters()


def test_all_methods_and_bad_input():
    assert set(estimate_all_methods(N_SMOL, SMOL)) == {"full", "lora", "qlora"}
    with pytest.raises(TunelabError, match="unknown method"):
        estimate_training_memory(N_SMOL, SMOL, "ia3")
    with pytest.raises(TunelabError, match="unknown dtype"):
        estimate_training_memory(N_SMOL, SMOL, "full", dtype="int4")
    with pytest.raises(TunelabError, match="hidden_size"):
        ArchShape.from_config({"vocab_size": 10})


def test_a_memory_model_is_passed_in_as_facts():
    from tunelab.models.memory import LORA, MemoryModel

    named = estimate_training_memory(N_SMOL, SMOL, "lora")
    assert estimate_training_memory(N_SMOL, SMOL, LORA) == named
    adapters_on_4bit = MemoryModel("my-qlora", trainable="lora", base="nf4")
    custom = estimate_training_memory(N_SMOL, SMOL, adapters_on_4bit)
    assert custom["method"] == "my-qlora"
    assert custom["bytes"] == estimate_training_memory(N_SMOL, SMOL, "qlora")["bytes"]
    assert set(estimate_all_methods(N_SMOL, SMOL, models={"mine": adapters_on_4bit})) == {"mine"}
