"""The real bundled models: pull (GGUF -> safetensors cache) and use them. Minutes each: marked slow."""

from __future__ import annotations

import json
import time

import pytest

from tunelab.models.bundled import find_bundled
from tunelab.models.registry import PROVENANCE_FILE, is_pulled, pull, resolve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("bundled-home")
        mp.setenv("TUNELAB_HOME", str(path))
        yield path


def _pull_timed(name: str) -> tuple[object, float]:
    find_bundled(name).require_installed()  # `make test` installs both: a missing one is a failure, not a skip
    started = time.perf_counter()
    path = pull(name)
    return path, time.perf_counter() - started


def test_smollm2_pull_and_chat(home):
    from tunelab.models.loading import load_model_and_tokenizer

    path, seconds = _pull_timed("smollm2-135m-instruct")
    print(f"smollm2-135m-instruct pull: {seconds:.1f} s")
    assert path.parent == home / "models" and is_pulled(resolve("smollm2-135m-instruct"))
    prov = json.loads((path / PROVENANCE_FILE).read_text())
    assert prov["template"]["name"] == "chatml" and prov["template"]["source"] == "model"
    assert prov["licence"] == "apache-2.0" and prov["n_params"] == 134_515_008

    started = time.perf_counter()
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    print(f"load from cache: {time.perf_counter() - started:.1f} s")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    batch = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(batch["input_ids"][0]).endswith("<|im_start|>assistant\n")
    out = model.generate(**batch, max_new_tokens=48, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:].tolist()
    text = tok.decode(new, skip_special_tokens=True).strip()
    print(f"answer: {text!r}")
    assert text and new[-1] == im_end and len(new) < 48  # stopped at <|im_end|>, not at the length cap
    assert "Paris" in text


def test_gemma3_pull_and_template(home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.loading import load_tokenizer
    from tunelab.models.templates import GEMMA_TURNS_TEMPLATE, stop_token_ids, template_info

    path, seconds = _pull_timed("gemma3-270m")
    print(f"gemma3-270m pull: {seconds:.1f} s")
    assert not list(path.parent.glob(".assemble-*"))  # the assembled GGUF was only scratch
    prov = json.loads((path / PROVENANCE_FILE).read_text())
    assert prov["template"]["name"] == "gemma-turns" and prov["template"]["source"] == "tunelab-default"
    assert prov["licence"] == "Gemma Terms of Use" and prov["model_type"] == "gemma3_text"
    assert prov["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

    raw = AutoTokenizer.from_pretrained(path)  # the template is in the cached tokenizer itself
    assert raw.chat_template == GEMMA_TURNS_TEMPLATE
    tok = load_tokenizer("gemma3-270m")
    info = template_info(tok)
    assert info == prov["template"] and info["eos_token"] == "<end_of_turn>"
    vocab = tok.get_vocab()
    assert stop_token_ids(tok) == [vocab["<end_of_turn>"], vocab["<eos>"]]
    conv = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]
    assert tok.apply_chat_template(conv, tokenize=False) == (
        "<bos><start_of_turn>user\nAnswer briefly.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
    )
    ids = tok.apply_chat_template(conv[:2], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[-3:] == tok("<start_of_turn>model\n", add_special_tokens=False)["input_ids"]

    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.generation_config.eos_token_id == [vocab["<end_of_turn>"], vocab["<eos>"]]
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()
