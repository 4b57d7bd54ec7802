"""Loading models and tokenizers by name, on a device and dtype, with clear errors for the impossible."""

from __future__ import annotations

import warnings

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models.loading import (
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)


def test_load_model_and_tokenizer_from_local_dir(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.chat_template and tok.pad_token is not None


def test_generation_stops_on_template_eos(tiny_model_dir):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == im_end
    batch = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_dtype_choice(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on an AVX2-only CPU warns that it is slow
        model = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(TunelabError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")


def test_cuda_without_cuda_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(TunelabError, match="no CUDA GPU is available") as err:
        load_model(str(tiny_model_dir), device="cuda")
    assert "--device cpu" in str(err.value)
    with pytest.raises(TunelabError, match="cuda:1"):
        resolve_device("cuda:1")


def test_device_resolution():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TunelabError, match="unknown device"):
        resolve_device("tpu")


def test_4bit_loading_goes_through_the_same_loader(tiny_model_dir):
    model = load_model(str(tiny_model_dir), quantization="nf4")
    kinds = {p.__class__.__name__ for p in model.parameters()}
    assert "Params4bit" in kinds  # the linear layers, in NF4
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(TunelabError, match="unknown quantization 'int3'"):
        load_model(str(tiny_model_dir), quantization="int3")


def test_an_adapter_loads_and_merges_to_the_same_outputs(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tunelab.models.loading import load_adapter, merge_adapter

    torch.manual_seed(0)
    # init_lora_weights=False: random B, so the adapter changes the outputs
    adapted = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        base = load_model(str(tiny_model_dir))(ids).logits
        loaded = load_adapter(load_model(str(tiny_model_dir)), tmp_path / "adapter")
        merged = merge_adapter(str(tiny_model_dir), tmp_path / "adapter")
        with_adapter, merged_out = loaded(ids).logits, merged(ids).logits
    assert not torch.allclose(with_adapter, base)
    torch.testing.assert_close(merged_out, with_adapter, rtol=1e-5, atol=1e-5)
    assert not any("lora_" in n for n, _ in merged.named_parameters())  # plain weights
    assert merged.dtype == torch.float32
