"""Constrained decoding on the tiny random Llama: every row of a batch parses against its own JSON schema
(enums, nested objects, arrays, bounded integers), rows finish at different steps, greedy and sampled,
and unconstrained rows of the same batch are left alone. A random model is the right test: without
the grammar it never writes JSON."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tunelab.errors import TunelabError
from tunelab.llm.schema import bound_schema, reply_schema, token_budget
from tunelab.models.generate import GenerationConfig, Generator
from tunelab.models.grammar import Choice

from .test_models_generate import PROMPTS, varied_model

CORPUS = ["Employees get 27 days of paid leave per year.", "Expense reports are due within 30 days.",
          "Contact the IT helpdesk at extension 4455.", "question answer title team size steps"] * 10


class Step(BaseModel):
    name: str
    kind: Literal["read", "write", "check"]
    done: bool


class Owner(BaseModel):
    team: str
    size: int = Field(ge=1, le=12)


class Plan(BaseModel):
    title: str
    owner: Owner
    steps: list[Step] = Field(min_length=1)


def plan_schema(n_steps: int) -> dict:
    schema = reply_schema(Plan)
    schema["properties"]["steps"]["minItems"] = schema["properties"]["steps"]["maxItems"] = n_steps
    return bound_schema(schema, max_tokens=120)


@pytest.fixture(scope="module")
def gen(tiny_model_dir, tiny_tokenizer):
    return Generator(varied_model(tiny_model_dir), tiny_tokenizer, threads=1)


def check(out, n_steps: int, schema: dict) -> None:
    value = Plan.model_validate(json.loads(out.text))  # parses, and matches the schema
    assert len(value.steps) == n_steps
    assert len(value.title) <= schema["properties"]["title"]["maxLength"]
    assert out.finish_reason == "stop" and out.n_new_tokens <= token_budget(schema)


@pytest.mark.usefixtures("one_torch_thread")
def test_every_row_of_a_batch_parses_against_its_own_schema(gen):
    counts = [1, 3, 2, 1, 2]  # different item counts: rows finish at different steps
    schemas = [plan_schema(n) for n in counts]
    cfg = GenerationConfig(max_new_tokens=400, batch_size=3)

    free = gen.generate(PROMPTS, cfg)
    assert not any(_parses(o.text) for o in free)  # the random model never writes JSON on its own

    outs = gen.generate(PROMPTS, cfg, schemas=schemas)
    for out, n, schema in zip(outs, counts, schemas, strict=True):
        check(out, n, schema)
    assert len({o.n_new_tokens for o in outs}) > 1

    sampled = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=400, batch_size=2, temperature=1.0,
                                                     top_p=0.95, seed=3), schemas=schemas)
    for out, n, schema in zip(sampled, counts, schemas, strict=True):
        check(out, n, schema)
    assert [o.text for o in sampled] != [o.text for o in outs]


@pytest.mark.usefixtures("one_torch_thread")
def test_rows_without_a_schema_decode_as_before(gen):
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4)
    free = gen.generate(PROMPTS[:4], cfg)
    mixed = gen.generate(PROMPTS[:4], cfg, schemas=[None, plan_schema(1), None, plan_schema(2)])
    assert [mixed[0].text, mixed[2].text] == [free[0].text, free[2].text]
    # 12 tokens are too few for a whole plan, but the constrained rows start it
    assert mixed[1].text.startswith('{"title":"') and mixed[3].text.startswith('{"title":"')
    assert not free[1].text.startswith("{")


def gemma_style_tokenizer():
    """A tiny tokenizer laid out as Gemma 3's is: SentencePiece-style BPE, spaces as "▁", and byte
    fallback through <0xNN> tokens of the vocabulary (not added tokens)."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def shaped(model):
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        return tok

    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trained = shaped(models.BPE(unk_token="<unk>"))
    trained.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=160, special_tokens=special))
    vocab = trained.get_vocab()
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trained.to_str())["model"]["merges"]]
    tok = shaped(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.add_special_tokens(special)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_gemma_style_tokenizer_decodes_under_the_schema_too(tmp_path):
    from ..conftest import build_tiny_model

    tok = gemma_style_tokenizer()
    build_tiny_model(tmp_path, vocab_size=len(tok) + 12)  # a model vocabulary wider than the tokenizer's
    gen = Generator(varied_model(tmp_path), tok, chat_template=False, threads=1)
    prompts = ["Plan the leave request:", "Expense reports"]
    outs = gen.generate(prompts, GenerationConfig(max_new_tokens=400), schemas=[plan_schema(2), plan_schema(1)])
    for out, n in zip(outs, (2, 1), strict=True):
        check(out, n, plan_schema(n))


@pytest.mark.usefixtures("one_torch_thread")
def test_a_choice_row_writes_exactly_one_of_its_options(gen):
    """A label set as a Choice: the reply is one option verbatim (no JSON quotes, no padding), for
    options that share a prefix or hold quotes, backslashes and newlines, greedy and sampled."""
    options = ("it", "it issue", 'say "hi"', "back\\slash", "two\nlines", "café")
    cfg = GenerationConfig(max_new_tokens=30, batch_size=3)
    free = gen.generate(PROMPTS, cfg)
    assert not any(o.text in options for o in free)  # unconstrained, the random model writes none of them
    outs = gen.generate(PROMPTS, cfg, schemas=[Choice(options)] * len(PROMPTS))
    sampled = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=30, temperature=1.0, seed=1),
                           schemas=[Choice(options)] * len(PROMPTS))
    for out in outs + sampled:
        assert out.text in options and out.finish_reason == "stop"
    assert len({o.text for o in outs + sampled}) > 1  # the model's choice, not always the first option
    with pytest.raises(TunelabError, match="at least one non-empty option"):
        Choice(("a", ""))


def test_a_schema_per_prompt_is_checked(gen):
    with pytest.raises(TunelabError, match="2 schemas for 1 prompts"):
        gen.generate(PROMPTS[:1], schemas=[plan_schema(1), None])


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
