"""Chat templates: the model's own is kept, declared defaults render exact strings, info is stable."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.models.templates import (
    CHATML_TEMPLATE,
    GEMMA_TURNS_TEMPLATE,
    PLAIN_TEMPLATE,
    describe_template,
    ensure_chat_template,
    generation_header,
    stop_token_ids,
    template_info,
    template_sha256,
)

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
]
WORDS = ["Hi Hello hello there Be brief. How are you? Fine thanks"] * 10


def make_tokenizer(special: list[str], bos=None, eos=None, pad=None, unk=None, template=None):
    """A small byte-level BPE tokenizer with exactly the given special tokens (no template by default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(WORDS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=unk)
    fast.chat_template = template
    return fast


@pytest.fixture
def gemma_like():
    return make_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                          bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>")


@pytest.fixture
def chatml_tokens_no_template():
    return make_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|endoftext|>",
                          pad="<|endoftext|>")


@pytest.fixture
def plain_only():
    return make_tokenizer(["<|endoftext|>"], eos="<|endoftext|>")


def render(tokenizer, conv, gen=False) -> str:
    return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)


def test_model_template_is_kept_and_described(tiny_tokenizer):
    original = tiny_tokenizer.chat_template
    info = ensure_chat_template(tiny_tokenizer)
    assert tiny_tokenizer.chat_template == original
    assert info == {"name": "chatml", "source": "model", "sha256": template_sha256(original),
                    "eos_token": "<|im_end|>", "stop_tokens": ["<|im_end|>"]}
    assert stop_token_ids(tiny_tokenizer) == [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_gemma_default_renders_turns(gemma_like):
    info = ensure_chat_template(gemma_like)
    assert gemma_like.chat_template == GEMMA_TURNS_TEMPLATE
    assert info["name"] == "gemma-turns" and info["source"] == "tunelab-default"
    assert info["eos_token"] == "<end_of_turn>" and info["stop_tokens"] == ["<end_of_turn>", "<eos>"]
    assert render(gemma_like, CONV) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
    )
    prompt = render(gemma_like, CONV[:2], gen=True)
    assert prompt == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert prompt.endswith(generation_header(gemma_like))
    vocab = gemma_like.get_vocab()
    assert stop_token_ids(gemma_like) == [vocab["<end_of_turn>"], vocab["<eos>"]]


def test_gemma_default_multi_turn_folds_system_once(gemma_like):
    ensure_chat_template(gemma_like)
    conv = CONV + [{"role": "user", "content": "Again"}]
    assert render(gemma_like, conv, gen=True) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nAgain<end_of_turn>\n<start_of_turn>model\n"
    )
    assert render(gemma_like, CONV[1:2]) == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_chatml_default_when_its_tokens_exist(chatml_tokens_no_template):
    tok = chatml_tokens_no_template
    info = ensure_chat_template(tok)
    assert tok.chat_template == CHATML_TEMPLATE and info["name"] == "chatml"
    assert info["source"] == "tunelab-default" and info["stop_tokens"] == ["<|im_end|>", "<|endoftext|>"]
    assert render(tok, CONV) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert render(tok, CONV[:2], gen=True).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_plain_default_ends_replies_with_eos(plain_only):
    info = ensure_chat_template(plain_only)
    assert plain_only.chat_template == PLAIN_TEMPLATE
    assert info["name"] == "plain" and info["eos_token"] == "<|endoftext|>"
    assert render(plain_only, CONV) == (
        "### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\nHello!<|endoftext|>\n\n"
    )
    assert render(plain_only, CONV[:2], gen=True).endswith("### User:\nHi\n\n### Assistant:\n")


def test_no_template_and_no_eos_is_an_error():
    tok = make_tokenizer(["<|endoftext|>"])
    with pytest.raises(TunelabError, match="no eos token"):
        ensure_chat_template(tok)


@pytest.mark.parametrize("fixture", ["gemma_like", "chatml_tokens_no_template", "plain_only"])
def test_defaults_mark_assistant_tokens(fixture, request):
    tok = request.getfixturevalue(fixture)
    info = ensure_chat_template(tok)
    out = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(kept) == "Hello!" + info["eos_token"]


def test_info_survives_save_and_reload(gemma_like, tmp_path):
    from transformers import AutoTokenizer

    before = ensure_chat_template(gemma_like)
    gemma_like.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert template_info(reloaded) == before


def test_template_info_without_template_describes_the_default(plain_only):
    assert plain_only.chat_template is None
    assert template_info(plain_only)["name"] == "plain"
    assert plain_only.chat_template is None  # describing does not modify


def test_unknown_template_is_custom_with_eos():
    info = describe_template("{{ messages[0]['content'] }}", {"</s>"}, "</s>").info()
    assert info["name"] == "custom" and info["source"] == "model" and info["stop_tokens"] == ["</s>"]
